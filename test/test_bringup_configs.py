"""Each shipped bringup params file (config/bringup_*.yaml, docs/ros.md "Worked bringup") loads into the node's
own parameter declarations (types and ranges enforced by rcl), passes its start-up validation, names a command
interface with the limits that arming needs, and starts disarmed under a lifecycle manager."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter

from vla_policy_ros import params as P
from vla_policy_ros.command_interfaces import ActionLayout

ROOT = Path(__file__).resolve().parents[1]
BRINGUPS = sorted((ROOT / "config").glob("bringup_*.yaml"))


def test_a_bringup_ships_for_a_ur5e_a_franka_and_a_meca500():
    assert {"bringup_ur5e.yaml", "bringup_ur5e_servo.yaml", "bringup_franka.yaml", "bringup_meca500.yaml"} <= \
        {p.name for p in BRINGUPS}
    docs = (ROOT / "docs" / "ros.md").read_text()
    assert all(f"config/{p.name}" in docs for p in BRINGUPS), "every bringup file is explained in docs/ros.md"


@pytest.mark.parametrize("path", BRINGUPS, ids=[p.stem for p in BRINGUPS])
def test_the_bringup_params_load_and_validate_in_the_node(ros, path):
    from vla_policy_ros.policy_node import PolicyNode

    values = yaml.safe_load(path.read_text())["vla_policy"]["ros__parameters"]
    unknown = set(values) - {f for f in P.NodeParams.__dataclass_fields__}
    assert not unknown, f"{path.name}: unknown parameters {sorted(unknown)}"
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in values.items()]))
    params = P.read(node)  # what configure reads
    P.validate_static(params)
    assert not params.autostart and params.dry_run and not node.active  # waits for its lifecycle manager, disarmed
    assert params.command_interface in P.COMMAND_INTERFACES and params.command_interface != "none"
    layout = ActionLayout.from_names(list(params.action_roles), list(params.action_roles))
    if params.command_interface in P.JOINT_INTERFACES:
        assert len(layout.joints) >= 6 and params.max_chunk_motion > 0  # + the URDF's limits at configure
    else:  # the limits ~/enable requires for cartesian actions that rotate
        assert layout.cartesian and len(params.workspace_min) == len(params.workspace_max) == 3
        assert np.all(np.less(params.workspace_min, params.workspace_max)) and params.max_speed > 0
        assert params.max_angular_speed > 0 and params.max_chunk_rotation > 0
        assert params.ee_frame or params.pose_topic  # the ee pose from TF or a topic
    if params.max_delta:
        assert len(params.max_delta) == len(params.action_roles)
    assert params.heartbeat_topic and 0 < params.joint_state_timeout_s <= params.camera_timeout_s
