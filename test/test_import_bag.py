"""rosbag2 import (sqlite3 and mcap) through rosbags: bags written here, converted, checked."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_training.data.episodes import DatasetError, list_episodes
from vla_training.data.import_bag import import_bags, typestore

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


def _camera_bag(path: Path, frames: int = 4, split_gap: bool = False):
    """Six camera encodings (raw rgb8, bgr8 with padded rows, mono8, 16UC1, jpeg and png CompressedImage), a
    1026-channel Float32MultiArray sensor (no header), joint states and poses. Returns the expected RGB frames."""
    import cv2

    store = typestore()
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, Compressed = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CompressedImage"]
    Floats, Layout = T["std_msgs/msg/Float32MultiArray"], T["std_msgs/msg/MultiArrayLayout"]
    rng = np.random.default_rng(3)
    expected = {v: [] for v in ("rgb", "bgr", "mono", "depth", "jpeg", "png")}

    def header(t):
        return Header(stamp=Time(sec=int(t), nanosec=int(round((t % 1) * 1e9))), frame_id="cam")

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {v: writer.add_connection(f"/cam/{v}" + ("/compressed" if v in ("jpeg", "png") else ""),
                                          "sensor_msgs/msg/CompressedImage" if v in ("jpeg", "png")
                                          else "sensor_msgs/msg/Image", typestore=store) for v in expected}
        conns["oct"] = writer.add_connection("/oct", "std_msgs/msg/Float32MultiArray", typestore=store)
        conns["pose"] = writer.add_connection("/ee_pose", "geometry_msgs/msg/PoseStamped", typestore=store)
        for k in range(frames):
            t = 50.0 + 0.2 * k + (10.0 if split_gap and k >= frames // 2 else 0.0)
            ns = int(t * 1e9)
            rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
            padded = np.zeros((6, 10 * 3 + 8), np.uint8)
            padded[:, :30] = rgb[:, :, ::-1].reshape(6, 30)
            gray = rng.integers(0, 256, (6, 10), dtype=np.uint8)
            depth = rng.integers(0, 65536, (6, 10), dtype=np.uint16)
            raws = {"rgb": ("rgb8", rgb.ravel(), 30), "bgr": ("bgr8", padded.ravel(), 38), "mono": ("mono8", gray.ravel(), 10),
                    "depth": ("16UC1", depth.view(np.uint8).ravel(), 20)}
            for v, (encoding, data, step) in raws.items():
                msg = Image(header=header(t), height=6, width=10, encoding=encoding, is_bigendian=0, step=step, data=data)
                writer.write(conns[v], ns, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            expected["rgb"].append(rgb)
            expected["bgr"].append(rgb)  # the padding bytes never land in the picture
            expected["mono"].append(np.repeat(gray[:, :, None], 3, axis=2))
            expected["depth"].append(np.repeat((depth / 257.0).round().astype(np.uint8)[:, :, None], 3, axis=2))
            for v, ext in (("jpeg", ".jpg"), ("png", ".png")):
                data = np.frombuffer(cv2.imencode(ext, rgb[:, :, ::-1])[1].tobytes(), np.uint8)
                msg = Compressed(header=header(t), format=v, data=data)
                writer.write(conns[v], ns, store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
                expected[v].append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
            for j in range(3):  # one 1026-value sample per message, as an OCT driver publishes
                values = rng.normal(size=1026).astype(np.float32)
                writer.write(conns["oct"], ns + j * 1_000_000, store.serialize_cdr(
                    Floats(layout=Layout(dim=[], data_offset=0), data=values), "std_msgs/msg/Float32MultiArray"))
            P, Pose, Point, Q = (T[f"geometry_msgs/msg/{n}"] for n in ("PoseStamped", "Pose", "Point", "Quaternion"))
            pose = P(header=header(t), pose=Pose(position=Point(x=0.001 * k, y=0.0, z=0.0),
                                                   orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0)))
            writer.write(conns["pose"], ns, store.serialize_cdr(pose, "geometry_msgs/msg/PoseStamped"))
    return expected


def _camera_topics(path: Path, **extra) -> Path:
    spec = {"instruction": "look", "views": {v: f"/cam/{v}" + ("/compressed" if v in ("jpeg", "png") else "")
                                             for v in ("rgb", "bgr", "mono", "depth", "jpeg", "png")},
            "sensor": "/oct", "sensor_channels": 1026,
            "actions": {"source": "ee_pose_delta", "topic": "/ee_pose"}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_camera_encoding_imports_as_the_node_converts_it(tmp_path):
    from rosbags.highlevel import AnyReader

    from vla_training.data.messages import image_to_rgb

    expected = _camera_bag(tmp_path / "bag")
    (path,) = import_bags([str(tmp_path / "bag")], _camera_topics(tmp_path / "topics.yaml"), tmp_path / "out",
                          progress=False)
    (ep,) = list_episodes(tmp_path / "out")
    ep.validate()
    for view, frames in expected.items():  # lossless ones pixel-exact to the source, jpeg to its decoding
        for k, frame in enumerate(frames):
            assert np.array_equal(ep.frame(view, k), frame), (view, k)
    assert ep.image_storage["jpeg"] == "encoded" and ep.image_storage["rgb"] == "decoded"
    with AnyReader([tmp_path / "bag"], default_typestore=typestore()) as reader:  # the node's converter, same frames
        conns = [c for c in reader.connections if c.topic == "/cam/bgr"]
        for k, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            assert np.array_equal(image_to_rgb(reader.deserialize(raw, conn.msgtype)), ep.frame("bgr", k))
    assert ep.array("sensor").shape == (12, 1026)  # Float32MultiArray: one sample per message, receive-time stamps


def test_a_bag_with_several_episodes_splits_at_gaps(tmp_path):
    _camera_bag(tmp_path / "bag", frames=6, split_gap=True)
    topics = _camera_topics(tmp_path / "topics.yaml", split={"gap_s": 2.0})
    written = import_bags([str(tmp_path / "bag")], topics, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["bag_000", "bag_001"]
    assert [ep.length for ep in list_episodes(tmp_path / "out")] == [2, 2]


def test_float32_array_sensor_needs_its_channel_count(tmp_path):
    _camera_bag(tmp_path / "bag", frames=2)
    spec = yaml.safe_load(_camera_topics(tmp_path / "topics.yaml").read_text())
    spec.pop("sensor_channels")
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="field .sensor.: /oct carries 1026 values per message with no channel count"):
        import_bags([str(tmp_path / "bag")], tmp_path / "topics.yaml", tmp_path / "out", progress=False)
    assert not any(p.name.startswith("bag") for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else True
