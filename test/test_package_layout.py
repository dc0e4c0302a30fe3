"""The repository as a ROS 2 package: package.xml, CMake, messages, console scripts, import rules."""

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_vla_models_never_imports_rclpy_or_vla_training():
    code = "import sys, vla_models, vla_models.testing; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('rclpy', 'vla_training', 'vla_policy_ros')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "vla_models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("rclpy", "vla_training", "vla_policy_ros") for n in names), path


def test_vla_training_never_imports_the_ros_layer():
    """One direction: vla_policy_ros -> vla_training -> vla_models (every import, at any depth)."""
    for path in (ROOT / "vla_training").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("rclpy", "vla_policy_ros") for n in names), path


def test_package_xml_is_format_3_with_the_required_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "vla_policy_ros"
    depends = {e.text for e in root.findall("depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "trajectory_msgs"} <= depends
    assert root.find("export/build_type").text == "ament_cmake"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert {"rcl_interfaces", "rosgraph_msgs", "std_srvs", "lifecycle_msgs", "diagnostic_msgs", "python3-numpy",
            "python3-opencv", "python3-yaml"} <= exec_depends
    assert "ament_cmake_pytest" in {e.text for e in root.findall("test_depend")}
    assert root.findtext("member_of_group") == "rosidl_interface_packages"


def _setup_node_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "NODES":
            entries = ast.literal_eval(node.value)
            return {e.split("=")[0].strip(): e.split("=")[1].strip().split(":")[0] for e in entries}
    raise AssertionError("setup.py has no NODES list")


def test_cmake_node_executables_equal_setup_py_console_scripts():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(r"set\(VLA_NODE_EXECUTABLES([^)]*)\)", cmake).group(1)
    entries = re.findall(r'"?([\w]+=[\w.]+)"?', block.split("#")[0])
    assert dict(e.split("=") for e in entries) == _setup_node_scripts()


def test_action_chunk_message_fields():
    msg = pytest.importorskip("vla_policy_ros.msg")
    fields = msg.ActionChunk.get_fields_and_field_types()
    for name, kind in {"header": "std_msgs/Header", "policy_type": "string", "horizon": "uint32",
                       "action_dim": "uint32", "dt": "float", "action_names": "sequence<string>",
                       "actions": "sequence<float>", "latency_ms": "float"}.items():
        assert fields[name] == kind, name


def test_messages_are_built_into_the_venv():
    """`make setup` builds msg/ into the venv: the import must work (not be skipped) here."""
    from vla_policy_ros.msg import ActionChunk

    chunk = ActionChunk(horizon=2, action_dim=3)
    chunk.actions = [float(i) for i in range(6)]
    assert list(chunk.actions) == [0, 1, 2, 3, 4, 5]
