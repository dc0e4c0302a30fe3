"""pip metadata (kept here, not in setup.cfg, which would leak into the ament_cmake build).

The distribution is named `vla-policy-suite`: the message build installs an egg-info named
`vla_policy_ros`, and two distributions of one name would collide.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / "requirements" / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


# Console scripts. Node executables (group "nodes") are mirrored in CMakeLists.txt for `ros2 run`.
NODES: list[str] = ["policy_node = vla_policy_ros.policy_node:main",
                    "sim_robot_node = vla_policy_ros.sim_robot_node:main",
                    "bag_recorder = vla_policy_ros.bag_recorder:main",
                    "bag_replay = vla_policy_ros.bag_replay:main"]
TOOLS = ["vla = vla_training.cli:main", "policy_param = vla_policy_ros.param_client:main"]

setup(
    name="vla-policy-suite",
    version="0.1.0",
    description="Vision-language-action policies (Qwen-VL + sensor encoder + regression/diffusion experts) for ROS 2",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["vla_models", "vla_models.backbones", "vla_models.experts", "vla_models.runtime", "vla_training",
              "vla_training.data", "vla_training.training", "vla_training.evaluation", "vla_training.demos",
              "vla_policy_ros"],
    install_requires=["torch>=2.4"] + requirements("base.txt"),
    extras_require={"test": requirements("test.txt")},
    entry_points={"console_scripts": TOOLS + NODES},
)
