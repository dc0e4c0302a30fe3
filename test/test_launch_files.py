"""launch/policy.launch.py, loaded with small stand-ins for launch/launch_ros (not installable here).

The stand-ins record what the file builds; the test checks the node it would start. Skipped where
the real launch_ros imports (a ROS 2 install), where `ros2 launch` itself can be used.
"""

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _real_launch_ros() -> bool:
    try:
        import launch_ros  # noqa: F401
    except ImportError:
        return False
    return True


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(_Recorder):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


class FakeContext:
    def __init__(self, configurations):
        self.launch_configurations = configurations


@pytest.fixture
def launch_module(monkeypatch):
    if _real_launch_ros():
        pytest.skip("the real launch_ros is installed: use `ros2 launch` tests there")
    stand_ins = {
        "launch": {"LaunchDescription": type("LaunchDescription", (_Recorder,), {})},
        "launch.actions": {n: type(n, (_Recorder,), {}) for n in ("DeclareLaunchArgument", "OpaqueFunction",
                                                                  "EmitEvent", "RegisterEventHandler")},
        "launch.event_handlers": {"OnProcessExit": type("OnProcessExit", (_Recorder,), {})},
        "launch.events": {"Shutdown": type("Shutdown", (_Recorder,), {})},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                 "PathJoinSubstitution": type("PathJoinSubstitution", (_Recorder,), {})},
        "launch_ros.actions": {n: type(n, (_Recorder,), {}) for n in ("Node", "LifecycleNode")},
        "launch_ros.substitutions": {"FindPackageShare": type("FindPackageShare", (_Recorder,), {})},
        "launch_ros": {},
    }
    for name, attrs in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    def load(name="policy"):
        spec = importlib.util.spec_from_file_location(f"{name}_launch", ROOT / "launch" / f"{name}.launch.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    module = load()
    module.load = load
    return module


def _defaults(description):
    return {a.args[0]: a.kwargs["default_value"] for a in description.args[0] if type(a).__name__ == "DeclareLaunchArgument"}


def _node(description, **given):
    configs = {k: (v if isinstance(v, str) else "/share/vla_policy_ros/config/policy.yaml")
               for k, v in _defaults(description).items()}
    configs.update(given)
    opaque = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    (node,) = opaque[0].kwargs["function"](FakeContext(configs))
    return {**node.kwargs, "action": type(node).__name__}


def test_defaults_start_the_policy_node_with_the_shipped_params(launch_module):
    description = launch_module.generate_launch_description()
    assert {"params_file", "namespace", "policy_type", "regression_checkpoint", "diffusion_checkpoint",
            "sensor_topic"} <= set(_defaults(description))
    node = _node(description)
    assert (node["package"], node["executable"], node["name"]) == ("vla_policy_ros", "policy_node", "vla_policy")
    # a managed node that waits for its lifecycle manager on a robot; nothing else overridden
    assert node["action"] == "LifecycleNode"
    assert node["parameters"] == ["/share/vla_policy_ros/config/policy.yaml", {"autostart": False}]
    assert _node(description, autostart="true")["parameters"][1] == {"autostart": True}
    assert node["remappings"] == [] and node["namespace"] == ""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'"policy_node=vla_policy_ros\.policy_node"', cmake)  # the executable ros2 run finds


def test_arguments_override_parameters_and_remap_topics(launch_module):
    node = _node(launch_module.generate_launch_description(), policy_type="diffusion",
                 diffusion_checkpoint="/runs/d", dry_run="false", namespace="arm", sensor_topic="/ft/wrench")
    assert node["parameters"][1] == {"policy_type": "diffusion", "diffusion_checkpoint": "/runs/d", "dry_run": False,
                                     "autostart": False}
    assert node["remappings"] == [("sensor/wrench", "/ft/wrench")] and node["namespace"] == "arm"


def test_remap_defaults_match_the_params_file():
    params = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["vla_policy"]["ros__parameters"]
    text = (ROOT / "launch" / "policy.launch.py").read_text()
    for key in ("sensor_topic", "state_topic", "instruction_topic"):
        assert f'"{key}": ("{params[key]}"' in text


def test_sim_demo_launch_starts_the_policy_and_the_simulated_robot(launch_module, tmp_path):
    from conftest import make_policy

    checkpoint = make_policy("cpu", "diffusion").save(tmp_path / "ckpt")
    description = launch_module.load("sim_demo").generate_launch_description()
    configs = {**_defaults(description), "checkpoint": str(checkpoint), "episodes": "3"}
    opaque = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    policy, sim, on_exit = opaque[0].kwargs["function"](FakeContext(configs))
    assert (policy.kwargs["executable"], sim.kwargs["executable"]) == ("policy_node", "sim_robot_node")
    policy_params, sim_params = policy.kwargs["parameters"][0], sim.kwargs["parameters"][0]
    assert policy_params["use_sim_time"] and policy_params["policy_type"] == "diffusion"
    assert policy_params["diffusion_checkpoint"] == str(checkpoint.resolve())
    assert sim_params["episodes"] == 3 and sim_params["lockstep"] and sim_params["placement_seed"] == 1
    assert on_exit.args[0].kwargs["target_action"] is sim  # the launch ends with the simulated robot
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert '"sim_robot_node=vla_policy_ros.sim_robot_node"' in cmake


def test_the_shipped_params_file_documents_every_parameter():
    from dataclasses import fields

    from vla_policy_ros.params import DESCRIPTIONS, NodeParams

    params = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())["vla_policy"]["ros__parameters"]
    names = {f.name for f in fields(NodeParams)}
    assert set(params) == names == set(DESCRIPTIONS)
