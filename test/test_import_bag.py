"""rosbag2 import (sqlite3 and mcap) through rosbags: bags written here, converted, checked."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_training.episodes import DatasetError, list_episodes
from vla_training.import_bag import import_bags, typestore

ROOT = Path(__file__).resolve().parents[1]


def write_bag(path: Path, storage: StoragePlugin, frames: int = 6, sensor: str = "wrench") -> None:
    store = typestore()
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]

    def header(t):
        return Header(stamp=Time(sec=int(t), nanosec=int(round((t % 1) * 1e9))), frame_id="")

    Image = T["sensor_msgs/msg/Image"]
    Pose, PoseStamped = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseStamped"]
    Point, Quaternion = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    JointState = T["sensor_msgs/msg/JointState"]
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {
            "front": writer.add_connection("/camera/front/image_raw", "sensor_msgs/msg/Image", typestore=store),
            "wrist": writer.add_connection("/camera/wrist/image_raw", "sensor_msgs/msg/Image", typestore=store),
            "pose": writer.add_connection("/ee_pose", "geometry_msgs/msg/PoseStamped", typestore=store),
            "js": writer.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store),
        }
        if sensor == "wrench":
            conns["sensor"] = writer.add_connection("/sensor/wrench", "geometry_msgs/msg/WrenchStamped", typestore=store)
        else:
            conns["sensor"] = writer.add_connection("/sensor/wrench", "vla_policy_ros/msg/SensorPacket", typestore=store)

        def put(name, msg, msgtype, t, arrival_offset=0.0):
            writer.write(conns[name], int((t + arrival_offset) * 1e9), store.serialize_cdr(msg, msgtype))

        for k in range(frames):
            t = 100.0 + 0.1 * k
            for view, shade in (("front", 10), ("wrist", 20)):
                data = np.full((6, 8, 3), shade + k, np.uint8)
                put(view, Image(header=header(t), height=6, width=8, encoding="rgb8", is_bigendian=0, step=24,
                                data=data.ravel()), "sensor_msgs/msg/Image", t, arrival_offset=0.03)
            pose = Pose(position=Point(x=0.5 + 0.002 * k, y=0.0, z=0.2),
                        orientation=Quaternion(x=0.0, y=0.0, z=np.sin(0.01 * k / 2), w=np.cos(0.01 * k / 2)))
            put("pose", PoseStamped(header=header(t), pose=pose), "geometry_msgs/msg/PoseStamped", t)
            put("js", JointState(header=header(t), name=["a", "b"], position=np.array([k, -k], float),
                                 velocity=np.zeros(0), effort=np.zeros(0)), "sensor_msgs/msg/JointState", t)
            if sensor == "wrench":
                W, Vec, WS = T["geometry_msgs/msg/Wrench"], T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/WrenchStamped"]
                for j in range(4):
                    ts = t + 0.025 * j
                    put("sensor", WS(header=header(ts), wrench=W(force=Vec(x=1.0, y=0.0, z=float(k)),
                                                                   torque=Vec(x=0.0, y=0.0, z=0.0))),
                        "geometry_msgs/msg/WrenchStamped", ts)
            else:
                Packet = T["vla_policy_ros/msg/SensorPacket"]
                put("sensor", Packet(header=header(t), num_samples=4, channels=3, sample_rate=40.0, channel_names=[],
                                     sample_stamps=[], data=np.arange(12, dtype=np.float32) + k),
                    "vla_policy_ros/msg/SensorPacket", t)


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_import_bag(tmp_path, storage):
    write_bag(tmp_path / "bag1", storage)
    write_bag(tmp_path / "bag2", storage, frames=4)
    written = import_bags([str(tmp_path / "bag1"), str(tmp_path / "bag2")], ROOT / "config" / "bag_topics.yaml",
                          tmp_path / "out", progress=False)
    assert len(written) == 2  # several bags -> several episodes
    ep = list_episodes(tmp_path / "out")[0]
    ep.validate()
    assert ep.views == ["front", "wrist"] and ep.length == 5 and ep.instruction == "insert the needle"
    assert np.asarray(ep.array("images/wrist"))[3, 0, 0, 0] == 23
    t = np.asarray(ep.array("images/front_t"))
    assert np.allclose(t, 100.0 + 0.1 * np.arange(6))  # header stamps, not the (later) arrival times
    actions = np.asarray(ep.array("actions"))
    assert actions.shape == (5, 6) and np.allclose(actions[:, 0], 2.0)  # 2 mm per frame along x
    assert np.allclose(actions[:, 5], np.degrees(0.01), atol=1e-4)  # yaw delta in degrees
    assert ep.array("sensor").shape == (24, 6) and ep.array("state").shape == (6, 2)


def test_import_bag_with_sensor_packets_and_missing_topics(tmp_path):
    write_bag(tmp_path / "bag", StoragePlugin.MCAP, sensor="packet")
    spec = yaml.safe_load((ROOT / "config" / "bag_topics.yaml").read_text())
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(spec))
    import_bags([str(tmp_path / "bag")], tmp_path / "topics.yaml", tmp_path / "out", progress=False)
    ep = list_episodes(tmp_path / "out")[0]
    sensor, sensor_t = np.asarray(ep.array("sensor")), np.asarray(ep.array("sensor_t"))
    assert sensor.shape == (24, 3) and np.allclose(sensor_t[:4], 100.0 + np.arange(4) / 40.0)
    spec["state"] = "/no/such/topic"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match=r"topic\(s\) \['/no/such/topic'\] not in the bag"):
        import_bags([str(tmp_path / "bag")], tmp_path / "bad.yaml", tmp_path / "out2", progress=False)
    with pytest.raises(DatasetError, match="cannot open the bag"):
        import_bags([str(tmp_path / "nothing")], tmp_path / "topics.yaml", tmp_path / "out3", progress=False)
