"""Actions at a chosen control rate (`--rate HZ`) and never across a gap, for rosbag2 and the research folders."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_training.cli import main as vla
from vla_training.data.episodes import DatasetError, list_episodes
from vla_training.data.import_bag import typestore
from vla_training.data.samples import control_period

T0 = 100.0


def _pose_bag(path: Path, fps=30.0, frames=30, drop_frames=(), pose_hz=500.0, pose_hole=None) -> Path:
    """A camera at `fps` (frames in `drop_frames` missing, as a camera under load drops them) and the ee pose at
    `pose_hz` moving +10 mm/s along x and turning 6 deg/s about z (`pose_hole`: (start, end) s without poses)."""
    store = typestore()
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, PS = T["sensor_msgs/msg/Image"], T["geometry_msgs/msg/PoseStamped"]
    Pose, Point, Q = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]

    def header(t):
        return Header(stamp=Time(sec=int(t), nanosec=int(round((t % 1) * 1e9))), frame_id="")

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection("/camera/front/image_raw", "sensor_msgs/msg/Image", typestore=store)
        ee = writer.add_connection("/ee_pose", "geometry_msgs/msg/PoseStamped", typestore=store)
        events = [(T0 + k / fps, "cam", k) for k in range(frames) if k not in drop_frames]
        duration = (frames - 1) / fps
        events += [(T0 + j / pose_hz, "ee", j) for j in range(int(duration * pose_hz) + 3)
                   if not (pose_hole and pose_hole[0] <= j / pose_hz <= pose_hole[1])]
        for t, kind, k in sorted(events):
            if kind == "cam":
                data = np.full((4, 6, 3), k % 250, np.uint8).ravel()
                msg = Image(header=header(t), height=4, width=6, encoding="rgb8", is_bigendian=0, step=18, data=data)
                writer.write(cam, int(t * 1e9), store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            else:
                yaw = np.radians(6.0 * (t - T0))
                pose = Pose(position=Point(x=0.3 + 0.01 * (t - T0), y=0.0, z=0.2),
                            orientation=Q(x=0.0, y=0.0, z=np.sin(yaw / 2), w=np.cos(yaw / 2)))
                writer.write(ee, int(t * 1e9), store.serialize_cdr(PS(header=header(t), pose=pose),
                                                                 "geometry_msgs/msg/PoseStamped"))
    return path


def _topics(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"instruction": "reach", "views": {"front": "/camera/front/image_raw"},
                                    "actions": {"source": "ee_pose_delta", "topic": "/ee_pose"}}))
    return path


def _import(tmp_path, bag, *extra) -> object:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert vla(["data", "import-bag", str(bag), "--topics", str(_topics(tmp_path / "topics.yaml")), "--out", str(out),
                "--no-progress", *extra]) == 0
    (episode,) = list_episodes(out)
    return episode


def test_bag_actions_at_the_control_rate(tmp_path):
    bag = _pose_bag(tmp_path / "bag")
    at_frames = _import(tmp_path, bag)
    assert np.allclose(np.asarray(at_frames.array("actions"))[:, 0], 10.0 / 30, atol=1e-3)  # mm per frame period
    at_rate = _import(tmp_path, bag, "--rate", "10")
    t, actions = np.asarray(at_rate.array("actions_t")), np.asarray(at_rate.array("actions"))
    assert np.allclose(np.diff(t), 0.1) and len(t) == 9  # 0 .. 0.967 s of frames: grid 0, 0.1, ..., 0.9
    assert np.allclose(actions[:, 0], 1.0, atol=1e-6)  # 10 mm/s x 0.1 s
    assert np.allclose(actions[:, 5], 0.6, atol=1e-6)  # 6 deg/s x 0.1 s
    assert at_rate.meta["control_rate_hz"] == 10.0
    assert control_period([at_rate]) == pytest.approx(0.1)  # what vla train writes into the checkpoint's dt


def test_bag_delta_across_dropped_frames_is_dropped_not_labelled_as_one_step(tmp_path):
    episode = _import(tmp_path, _pose_bag(tmp_path / "bag", drop_frames=(10, 11)))
    actions = np.asarray(episode.array("actions"))
    assert np.allclose(actions[:, 0], 10.0 / 30, atol=1e-3), actions[:, 0]  # today: one action of 3 periods
    assert episode.meta["dropped_at_gaps"] == 1 and len(actions) == 26  # 28 frames, 27 pairs, 1 across the gap


def test_bag_rate_never_interpolates_across_a_pose_gap(tmp_path):
    episode = _import(tmp_path, _pose_bag(tmp_path / "bag", pose_hole=(0.32, 0.58)), "--rate", "10")
    t, actions = np.asarray(episode.array("actions_t")) - T0, np.asarray(episode.array("actions"))
    assert np.allclose(actions[:, 0], 1.0, atol=1e-6)  # every kept delta is one control period's motion
    # grid points 0.4 and 0.5 lie in the hole: the deltas 0.3->0.4, 0.4->0.5, 0.5->0.6 are dropped
    assert np.allclose(t, [0.0, 0.1, 0.2, 0.6, 0.7, 0.8]) and episode.meta["dropped_at_gaps"] == 3


def test_bad_rate_is_a_named_error(tmp_path):
    bag = _pose_bag(tmp_path / "bag", frames=5)
    with pytest.raises(DatasetError, match=r"--rate: expected a control rate in Hz > 0, got -5"):
        from vla_training.data.import_bag import import_bags
        import_bags([str(bag)], _topics(tmp_path / "topics.yaml"), tmp_path / "out", progress=False, rate=-5.0)
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_seed_import_at_the_control_rate(tmp_path):
    """Research folders: View1 every 0.5 s, robot state every 10 ms with pose_y +2 mm a row; --rate 20 puts an
    action every 50 ms of 10 mm each, the 0.1 s hole in the state stream dropped, not bridged."""
    from seed_recordings import legacy_session, states_csv

    t0 = 1761551500.0
    session = legacy_session(tmp_path / "src", "recv_all_20251027_120000", t0, frames=6)
    csv_path = session / "robot_state_20251027_120000.csv"
    states_csv(csv_path, t0 + 0.006 + np.arange(0, 300) * 0.01)
    header, *rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([header, *[r for r in rows if not t0 + 1.45 <= float(r.split(",")[0]) <= t0 + 1.55]])
                        + "\n")
    assert vla(["data", "import-seed", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--rate", "20",
                "--no-progress"]) == 0
    (episode,) = list_episodes(tmp_path / "out")
    t, actions = np.asarray(episode.array("actions_t")), np.asarray(episode.array("actions"))
    assert np.allclose(np.diff(t)[np.diff(t) < 0.06], 0.05)
    assert np.allclose(actions[:, 1], 10.0, atol=1e-6)  # pose_y: 2 mm per 10 ms -> 10 mm per 50 ms
    last_before, first_after = t0 + 1.446, t0 + 1.556  # the recorded states around the hole
    assert not np.any((t < first_after - 1e-6) & (t + 0.05 > last_before + 1e-6)), "a delta bridges the hole"
    assert episode.meta["dropped_at_gaps"] == 3
    assert control_period([episode]) == pytest.approx(0.05)
