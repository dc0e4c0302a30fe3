"""The path a user walks with the research code's recordings: both on-disk layouts (ORIGIN.md), with
their mess -> `vla data import-seed` -> `vla data info --check` -> `vla train` of both experts with a
seed-shaped tiny config (tiny Qwen-VL, 3 views, 1026 sensor channels, 12-d state, 7-d actions) ->
the checkpoint in the policy node: its chunks are timed with the data's control period and it reads
the sensor window it was trained with."""

import json
import subprocess
import sys

import numpy as np
import pytest
from ros_helpers import start_policy_node, stamp
from seed_recordings import episode_session, legacy_session

from vla_models import load_policy
from vla_training.data.episodes import list_episodes

VIEWS = ["View1", "View2", "View5"]
SEED_SHAPED = ["-o", f"views=[{','.join(VIEWS)}]", "-o", "sensor.channels=1026", "-o", "state.dim=12",
               "-o", "action_dim=7", "-o", "action_names=[dx,dy,dz,da,db,dr,gripper]", "-o", "policy.horizon=4"]
WINDOW = 120


def vla(*args, check=True):
    run = subprocess.run([sys.executable, "-m", "vla_training.cli", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    legacy_session(root / "src", "recv_all_20251027_120000", 1761551500.0)
    legacy_session(root / "src", "recv_all_20251027_130000", 1761555100.0, with_sensor=False)  # most sessions
    episode_session(root / "src", "episode_20251101_090000", 1762000000.0)
    vla("data", "import-seed", str(root / "src"), "--out", str(root / "data"), "--no-progress")
    return root


def test_import_and_check_report_the_missing_streams(imported):
    episodes = {ep.name.split("__")[-1]: ep for ep in list_episodes(imported / "data")}
    assert set(episodes) == {"recv_all_20251027_120000", "recv_all_20251027_130000", "episode_20251101_090000"}
    assert not episodes["recv_all_20251027_130000"].has("sensor")
    assert episodes["recv_all_20251027_120000"].frame_count("View3") == 4  # one frame fewer than View1
    info = vla("data", "info", str(imported / "data"), "--check", "--config", "tiny", *SEED_SHAPED).stdout
    assert "recv_all_20251027_130000" in info and "no sensor: trained with a masked sensor window" in info
    assert "every array read" in info


def test_config_that_does_not_fit_fails_before_any_model_loads(imported, tmp_path):
    wrong = vla("train", "--config", "seed", "--dataset", str(imported / "data"), "--out", str(tmp_path / "r"),
                "--max-steps", "1", "-o", f"views=[{','.join(VIEWS)}]",
                "-o", "state.columns=[joint_1,joint_9,joint_3,joint_4,joint_5,joint_6]",
                check=False)
    assert wrong.returncode != 0
    assert "field 'state': columns ['joint_9']" in wrong.stderr + wrong.stdout
    assert "Qwen" not in wrong.stderr  # failed on the data check, not while building the 3B backbone


@pytest.mark.parametrize("expert", ["regression", "diffusion"])
def test_train_on_the_recordings_and_serve_with_their_timing(imported, tmp_path, expert, ros):
    run = tmp_path / expert
    out = vla("train", "--config", "tiny", *SEED_SHAPED, "--dataset", str(imported / "data"), "--out", str(run),
              "--expert", expert, "--max-steps", "3", "--batch-size", "4", "--sensor-window", str(WINDOW),
              "--sensor-weight", "2", "--val-fraction", "0", "--no-progress").stdout
    assert "one action every 0.5000 s" in out  # the recordings' rate, not the config's 0.1 s
    policy = load_policy(run / "last")
    assert policy.config.dt == pytest.approx(0.5) and policy.config.sensor.window == WINDOW
    trained = json.loads((run / "train_config.json").read_text())
    assert trained["train"]["sensor_weight"] == 2.0

    node = start_policy_node(ros, {"regression_checkpoint" if expert == "regression" else "diffusion_checkpoint":
                                   str(run / "last"), "policy_type": expert, "sensor_topic": "oct",
                                   "sensor_type": "array", "rate_hz": 10.0, "slop_s": 0.02, "command_interface": "none",
                                   "image_topics": [f"cam/{v}" for v in VIEWS]})
    assert node.dt == pytest.approx(0.5) and node.inputs.spec.sensor_window == WINDOW
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray

    from vla_policy_ros.image_conversion import rgb_to_image_msg
    from vla_policy_ros.msg import ActionChunk

    client = ros.add(Node("seed_robot", context=ros.context))
    cams = {v: client.create_publisher(Image, f"cam/{v}", 10) for v in VIEWS}
    oct_pub = client.create_publisher(Float32MultiArray, "oct", 100)  # 1026 floats per message, as an OCT driver
    joints = client.create_publisher(JointState, "joint_states", 10)
    chunks = []
    client.create_subscription(ActionChunk, "/vla_policy/action_chunk", chunks.append, 10)
    ros.wait_for(lambda: all(p.get_subscription_count() for p in [*cams.values(), oct_pub, joints]), what="discovery")
    rng = np.random.default_rng(0)

    def feed():
        import time

        now = time.time()
        for _ in range(5):
            oct_pub.publish(Float32MultiArray(data=rng.normal(size=1026).astype(np.float32).tolist()))
        for v, pub in cams.items():
            pub.publish(rgb_to_image_msg(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), stamp(now)))
        js = JointState(name=[f"joint_{i}" for i in range(1, 7)] + ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b",
                                                                     "pose_r"], position=rng.normal(size=12).tolist())
        js.header.stamp = stamp(now)
        joints.publish(js)
        time.sleep(0.05)
        return bool(chunks)

    ros.wait_for(feed, timeout=60, what="a chunk from the seed-trained checkpoint")
    chunk = chunks[-1]
    assert chunk.dt == pytest.approx(0.5) and (chunk.horizon, chunk.action_dim) == (4, 7)
    assert list(chunk.action_names) == ["dx", "dy", "dz", "da", "db", "dr", "gripper"]
