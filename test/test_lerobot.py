"""LeRobotDataset v3 in and out: our export read by LeRobot's own `LeRobotDataset`, a dataset LeRobot
wrote imported, the round trip, and bad input (named errors, nothing half-written).

LeRobot runs in a child process (HF_HUB_OFFLINE=1). Its dataset module imports torchvision at the
top (for `transforms.ToTensor` and the `torchvision.io.VideoReader` of its "pyav" backend); the
PyPI torchvision wheel is built against CUDA torch and fails to load with our CPU torch 2.13
("operator torchvision::nms does not exist"), torchvision 0.28 has no VideoReader any more, and
torchcodec needs FFmpeg shared libraries this machine lacks. So when torchvision cannot import,
the child gets a stand-in `torchvision` whose VideoReader decodes with PyAV; LeRobot's own code does
everything else (metadata, parquet, timestamp -> frame matching with its tolerance checks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from vla_training.data.episodes import DatasetError, EpisodeData, list_episodes, write_episode  # noqa: E402
from vla_training.data.lerobot_export import export_lerobot  # noqa: E402
from vla_training.data.lerobot_import import action_meaning, import_lerobot  # noqa: E402

FPS, LENGTHS, SENSOR_HZ = 10, (12, 9, 15), 400
TORCHVISION_STAND_IN = '''
import av, torch
class VideoReader:
    def __init__(self, path, stream="video"):
        self.container = av.open(path)
        self._stream = self.container.streams.video[0]
    def seek(self, ts, keyframes_only=True):
        self.container.seek(int(ts / self._stream.time_base), stream=self._stream, backward=True, any_frame=False)
    def __iter__(self):
        for frame in self.container.decode(self._stream):
            yield {"data": torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1),
                   "pts": float(frame.pts * self._stream.time_base)}
'''


def run_lerobot(tmp_path: Path, script: str) -> dict:
    """Run SCRIPT (which prints one JSON line last) with LeRobot importable; skip if lerobot is absent."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, env=env)
    if probe.returncode != 0:
        stand_in = tmp_path / "stand_in" / "torchvision"
        stand_in.mkdir(parents=True, exist_ok=True)
        (stand_in / "__init__.py").write_text("from . import io, transforms\ndef set_video_backend(b): pass\n")
        (stand_in / "io.py").write_text(TORCHVISION_STAND_IN)
        (stand_in / "transforms.py").write_text("class ToTensor:\n    pass\n")
        env["PYTHONPATH"] = os.pathsep.join([str(stand_in.parent), env.get("PYTHONPATH", "")])
    have = subprocess.run([sys.executable, "-c", "import lerobot.datasets.lerobot_dataset"], capture_output=True,
                          env=env, text=True)
    if have.returncode != 0:
        pytest.skip(f"lerobot not importable (make setup installs requirements/lerobot.txt): {have.stderr[-300:]}")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def frame_image(e: int, k: int) -> np.ndarray:
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, :, 0] = (20 * k + 40 * e) % 256
    img[:, :24, 1] = 200
    return img


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Path:
    """Three episodes of unequal length, two tasks, one view, state, a 400 Hz sensor, 10 Hz control."""
    root = tmp_path_factory.mktemp("ours") / "dataset"
    rng = np.random.default_rng(0)
    for e, n in enumerate(LENGTHS):
        t = 5.0 + np.arange(n) / FPS
        st = 5.0 + np.arange(n * SENSOR_HZ // FPS) / SENSOR_HZ
        write_episode(root, f"episode_{e:06d}", EpisodeData(
            instruction=f"task {e % 2}", actions=rng.normal(size=(n, 4)).astype(np.float32), actions_t=t,
            action_names=["dx", "dy", "dz", "grip"], state=rng.normal(size=(n, 5)).astype(np.float32), state_t=t,
            state_names=list("abcde"), sensor=rng.normal(size=(len(st), 3)).astype(np.float32), sensor_t=st,
            sensor_names=["fx", "fy", "fz"], images={"front": np.stack([frame_image(e, k) for k in range(n)])},
            images_t={"front": t}, meta={"success": True, "source": "test"}))
    return root


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory) -> Path:
    return export_lerobot(ours, tmp_path_factory.mktemp("lerobot") / "peg", "me/peg")


def test_export_layout_follows_v3(exported):
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    f = info["features"]
    assert f["observation.images.front"]["dtype"] == "video" and f["observation.images.front"]["shape"] == [32, 48, 3]
    assert f["observation.state"] == {"dtype": "float32", "shape": [5], "names": list("abcde")}
    assert f["action"]["names"] == ["dx", "dy", "dz", "grip"]
    assert f["observation.sensor"]["shape"] == [SENSOR_HZ // FPS, 3]
    for path in ("meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                 "data/chunk-000/file-000.parquet", "videos/observation.images.front/chunk-000/file-000.mp4"):
        assert (exported / path).is_file(), path
    assert not list(exported.parent.glob(".*tmp*"))


def test_lerobot_reads_our_export(ours, exported, tmp_path):
    got = run_lerobot(tmp_path, f"""
        import json
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        ds = LeRobotDataset("me/peg", root={str(exported)!r}, video_backend="pyav")
        items = [ds[i] for i in range(len(ds))]
        print(json.dumps({{"len": len(ds), "fps": ds.fps, "episodes": ds.num_episodes,
            "from": [int(x) for x in ds.meta.episodes["dataset_from_index"]],
            "to": [int(x) for x in ds.meta.episodes["dataset_to_index"]],
            "tasks": [it["task"] for it in items], "actions": [it["action"].tolist() for it in items],
            "state": [it["observation.state"].tolist() for it in items],
            "red": [float(it["observation.images.front"][0].mean() * 255) for it in items],
            "timestamps": [float(it["timestamp"]) for it in items],
            "sensor_shape": list(items[0]["observation.sensor"].shape)}}))
        """)
    episodes = list_episodes(ours)
    assert got["len"] == sum(LENGTHS) and got["fps"] == FPS and got["episodes"] == 3
    assert got["from"] == [0, 12, 21] and got["to"] == [12, 21, 36]
    want_actions = np.concatenate([ep.array("actions") for ep in episodes])
    np.testing.assert_allclose(got["actions"], want_actions, rtol=0, atol=1e-7)
    np.testing.assert_allclose(got["state"], np.concatenate([ep.array("state") for ep in episodes]), atol=1e-7)
    assert got["tasks"] == [ep.instruction for ep in episodes for _ in range(ep.length)]
    np.testing.assert_allclose(got["timestamps"], np.concatenate([np.arange(n) / FPS for n in LENGTHS]), atol=1e-6)
    want_red = [float(frame_image(e, k)[:, :, 0].mean()) for e, n in enumerate(LENGTHS) for k in range(n)]
    np.testing.assert_allclose(got["red"], want_red, atol=4.0)  # the codec's loss
    assert got["sensor_shape"] == [SENSOR_HZ // FPS, 3]


def test_round_trip_gives_the_same_arrays(ours, exported, tmp_path):
    back = tmp_path / "back"
    import_lerobot(exported, back)
    for a, b in zip(list_episodes(ours), list_episodes(back), strict=True):
        assert b.instruction == a.instruction and b.meta["success"] is True and b.length == a.length
        np.testing.assert_array_equal(b.array("actions"), a.array("actions"))
        np.testing.assert_array_equal(b.array("state"), a.array("state"))
        np.testing.assert_allclose(np.diff(b.array("actions_t")), np.diff(a.array("actions_t")), atol=1e-9)
        # the whole sensor stream (the samples after the last control step come back from the side array)
        np.testing.assert_array_equal(b.array("sensor"), a.array("sensor"))
        np.testing.assert_allclose(b.array("sensor_t") - b.array("actions_t")[0],
                                   a.array("sensor_t") - a.array("actions_t")[0], atol=1e-9)
        for k in range(a.length):
            diff = np.abs(b.frame("front", k).astype(int) - a.frame("front", k))
            assert diff.mean() < 3.0 and diff.max() < 40, (a.name, k)


def test_import_what_lerobot_wrote(tmp_path):
    root = tmp_path / "written"
    run_lerobot(tmp_path, f"""
        import json
        import numpy as np
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        features = {{"observation.images.wrist": {{"dtype": "video", "shape": (32, 48, 3),
                                                   "names": ["height", "width", "channels"]}},
                    "observation.state": {{"dtype": "float32", "shape": (2,), "names": ["j1.pos", "j2.pos"]}},
                    "action": {{"dtype": "float32", "shape": (2,), "names": ["j1.pos", "j2.pos"]}}}}
        ds = LeRobotDataset.create("me/arm", fps=15, features=features, root={str(root)!r}, use_videos=True)
        for e, n in enumerate((6, 8)):
            for k in range(n):
                img = np.full((32, 48, 3), 30 * k, np.uint8)
                ds.add_frame({{"observation.images.wrist": img, "observation.state": np.array([k, e], np.float32),
                              "action": np.array([k + 1, e * k * k], np.float32), "task": f"lift {{e}}"}})
            ds.save_episode()
        ds.finalize()
        print(json.dumps({{"ok": True}}))
        """)
    out = tmp_path / "ours"
    import_lerobot(root, out)
    episodes = list_episodes(out)
    assert [ep.length for ep in episodes] == [6, 8] and [ep.instruction for ep in episodes] == ["lift 0", "lift 1"]
    assert episodes[0].meta["action_meaning"] == "absolute" and episodes[0].views == ["wrist"]
    np.testing.assert_array_equal(episodes[1].array("state")[:, 0], np.arange(8))
    np.testing.assert_allclose(np.diff(episodes[1].array("actions_t")), 1 / 15)
    for k in range(8):
        assert abs(float(episodes[1].frame("wrist", k).mean()) - 30 * k) < 4
    deltas = tmp_path / "deltas"
    import_lerobot(root, deltas, views=[], to_deltas=True)
    ep = list_episodes(deltas)[1]
    assert ep.meta["action_meaning"] == "delta" and ep.views == []
    np.testing.assert_allclose(ep.array("actions")[:-1, 1], np.diff(np.arange(8) ** 2))
    np.testing.assert_allclose(ep.array("actions")[:, 0], 1.0)


def _encode(path: Path, frames) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as dst:
        stream = dst.add_stream("h264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)


def test_import_v21(exported, tmp_path):
    """A v2.1 layout (one parquet and one mp4 per episode, jsonl metadata), made from our export."""
    import pyarrow.parquet as pq

    root = tmp_path / "v21"
    info = json.loads((exported / "meta" / "info.json").read_text())
    info.update(codebase_version="v2.1", data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    table = pq.read_table(str(exported / "data/chunk-000/file-000.parquet"))
    (root / "data" / "chunk-000").mkdir(parents=True)
    episodes = pq.read_table(str(exported / "meta/episodes/chunk-000/file-000.parquet")).to_pylist()
    for row in episodes:
        e = row["episode_index"]
        rows = table.filter(np.asarray(table.column("episode_index")) == e)
        pq.write_table(rows, str(root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"))
        _encode(root / f"videos/chunk-000/observation.images.front/episode_{e:06d}.mp4",
                [frame_image(e, k) for k in range(row["length"])])
    (root / "meta").mkdir()
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps({"episode_index": r["episode_index"], "tasks": r[
        "tasks"], "length": r["length"]}) + "\n" for r in episodes))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": f"task {i}"}) + "\n"
                                                       for i in range(2)))
    back = import_lerobot(root, tmp_path / "back")
    episodes = list_episodes(tmp_path / "back")
    assert len(back) == 3 and [ep.length for ep in episodes] == list(LENGTHS)
    assert episodes[1].instruction == "task 1" and episodes[2].views == ["front"]
    for k in range(LENGTHS[2]):
        assert np.abs(episodes[2].frame("front", k).astype(int) - frame_image(2, k)).mean() < 3.0


def _break_version(root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))


def _drop_action(root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info["features"].pop("action")
    (root / "meta/info.json").write_text(json.dumps(info))


def _unequal_lengths(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(str(path))
    lengths = table.column("length").to_pylist()
    table = table.set_column(table.column_names.index("length"), "length", pa.array([lengths[0] + 2] + lengths[1:]))
    pq.write_table(table, str(path))


def _short_video(root: Path) -> None:
    import av

    path = root / "videos/observation.images.front/chunk-000/file-000.mp4"
    with av.open(str(path)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)][:sum(LENGTHS) - 5]
    _encode(path, frames)


@pytest.mark.parametrize("damage, message", [
    (_break_version, "codebase_version.*v1.6.*expected"),
    (_drop_action, r"action feature 'action' is not in this dataset; its features are \[.*observation.state"),
    (_unequal_lengths, "episode 0 has 12 rows, but meta/episodes says its length is 14"),
    (_short_video, "the video is shorter than its data"),
])
def test_bad_input_is_named_and_nothing_is_half_written(exported, tmp_path, damage, message):
    root = tmp_path / "damaged"
    shutil.copytree(exported, root)
    damage(root)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=message):
        import_lerobot(root, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_mixed_episodes_and_existing_output(ours, exported, tmp_path):
    with pytest.raises(DatasetError, match="already exists"):
        export_lerobot(ours, exported, "me/peg")
    mixed = tmp_path / "mixed"
    shutil.copytree(ours, mixed)
    write_episode(mixed, "episode_000009", EpisodeData(instruction="x", actions=np.zeros((3, 2), np.float32),
                                                        actions_t=np.arange(3) / FPS, action_names=["a", "b"]))
    with pytest.raises(DatasetError, match="field 'action': 2, but episode_000000 has 4"):
        export_lerobot(mixed, tmp_path / "out", "me/x")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("names, declared, want", [
    (["dx", "dy", "dz", "grip"], "auto", "delta"), (["dx", "dy", "dz", "droll"], "auto", "delta"),
    (["delta_x", "delta_y"], "auto", "delta"), (["shoulder_pan.pos", "gripper.pos"], "auto", "absolute"),
    (["shoulder_pan.pos"], "delta", "delta"),
])
def test_action_meaning(names, declared, want):
    assert action_meaning(names, declared) == want


def test_cli_commands_of_the_docs(ours, tmp_path):
    """`vla data export-lerobot` / `import-lerobot` as docs/dataset.md shows them (h264, views by name)."""
    out, back = tmp_path / "lerobot", tmp_path / "back"
    cli = [sys.executable, "-m", "vla_training.cli", "data"]
    run = subprocess.run(cli + ["export-lerobot", str(ours), str(out), "--repo-id", "lab/peg", "--vcodec", "h264",
                                "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0 and "wrote LeRobotDataset v3.0 lab/peg" in run.stdout, run.stderr[-2000:]
    run = subprocess.run(cli + ["import-lerobot", str(out), str(back), "--views", "front", "--state",
                                "observation.state", "--action", "action", "--action-meaning", "delta",
                                "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0 and "wrote 3 episode(s)" in run.stdout, run.stderr[-2000:]
    assert [ep.length for ep in list_episodes(back)] == list(LENGTHS)
    run = subprocess.run(cli + ["import-lerobot", str(out), str(tmp_path / "x"), "--views", "side"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "'observation.images.side' is not in this dataset" in run.stderr


def test_export_at_a_lower_fps_takes_the_latest_step(ours, tmp_path):
    import pyarrow.parquet as pq

    out = export_lerobot(ours, tmp_path / "half", "me/half", fps=FPS / 2, vcodec="h264")
    info = json.loads((out / "meta/info.json").read_text())
    table = pq.read_table(str(out / "data/chunk-000/file-000.parquet"))
    assert info["fps"] == FPS // 2
    for e, ep in enumerate(list_episodes(ours)):
        rows = table.filter(np.asarray(table.column("episode_index")) == e)
        want = ep.array("actions")[::2]
        assert rows.num_rows == len(want)
        np.testing.assert_array_equal(np.stack(rows.column("action").to_numpy(zero_copy_only=False)), want)
        np.testing.assert_allclose(rows.column("timestamp").to_numpy(), np.arange(len(want)) / (FPS / 2), atol=1e-6)
