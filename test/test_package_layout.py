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


def _architecture():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import architecture
    finally:
        sys.path.pop(0)
    return architecture


def test_no_import_circle_and_imports_run_down_the_layers(tmp_path):
    """scripts/architecture.py's graph (every import, at any depth): no two files import each other, directly or
    round a circle, and no module imports a layer above its own (its LAYERS, top to bottom)."""
    arch = _architecture()
    edges = arch.graph()
    assert {"vla_models.checkpoint", "vla_models.policy", "vla_training.training.train"} <= set(edges)
    assert "vla_models.checkpoint_files" in edges["vla_models.policy"]  # the graph sees relative imports
    assert arch.cycles(edges) == []
    assert arch.upward_imports(edges) == []
    # the check itself can fail: a circle and an upward import added to the graph are found
    edges["vla_models.checkpoint_files"].add("vla_models.policy")
    edges["vla_training.data.samples"].add("vla_training.training.train")
    assert ["vla_models.checkpoint_files", "vla_models.policy"] in arch.cycles(edges)
    assert arch.upward_imports(edges) == ["vla_training.data.samples -> vla_training.training.train"]
    out = tmp_path / "layers.png"
    assert arch.main(["--out", str(out), "--json", str(tmp_path / "graph.json")]) == 0
    assert out.stat().st_size > 10_000 and (tmp_path / "graph.json").is_file()


def test_no_python_file_over_450_lines():
    files = [p for d in ("vla_models", "vla_training", "vla_policy_ros", "test", "bench", "scripts", "launch")
             for p in (ROOT / d).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 450}
    assert len(files) > 80 and long == {}


@pytest.mark.parametrize("old, new", [("vla_training.train", "vla_training.training.train"),
                                      ("vla_training.episodes", "vla_training.data.episodes"),
                                      ("vla_training.evaluate", "vla_training.evaluation.evaluate"),
                                      ("vla_training.vision_demo", "vla_training.demos.vision_demo")])
def test_moved_modules_keep_their_old_import_path_with_a_warning(old, new):
    code = (f"import warnings, importlib, sys\nwarnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print(w)\n"
            f"warnings.simplefilter('ignore')\nm = importlib.import_module({old!r})\n"
            f"print(m is importlib.import_module({new!r}), m.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.splitlines() == [f"{old} has moved to {new}; import it from there (the old path goes in the next "
                                "release)", f"True {new}"]


def test_checkpoint_module_keeps_its_names():
    from vla_models import checkpoint, load_policy, save_policy
    from vla_models.policy import VLAPolicy

    assert checkpoint.load_policy is load_policy and checkpoint.save_policy is save_policy
    assert {"CONFIG_FILE", "WEIGHTS_FILE", "read_manifest"} <= set(dir(checkpoint)) and callable(VLAPolicy.save)


def test_every_module_is_named_in_docs_architecture():
    """docs/architecture.md has a line for every module (by file name within its package or folder)."""
    text = (ROOT / "docs/architecture.md").read_text()
    modules = [p for pkg in ("vla_models", "vla_training", "vla_policy_ros") for p in (ROOT / pkg).rglob("*.py")
               if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in text and f"{p.name}" not in text]
    assert missing == []
