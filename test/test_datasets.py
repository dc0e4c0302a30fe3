"""Datasets: the canonical format, Meta-World demos, the seed importers, rosbag2 import, samples."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vla_models import preset
from vla_models.constants import ACTION, ACTION_IS_PAD, OBS_SENSOR, OBS_SENSOR_MASK, OBS_STATE
from vla_training.cli import main as vla
from vla_training.episodes import DatasetError, EpisodeData, list_episodes, write_episode
from vla_training.import_seed import import_seed
from vla_training.samples import ChunkDataset, collate, split_episodes


def _episode(n=20, views=("front",), nan=False):
    t = np.arange(n) * 0.1
    actions = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    if nan:
        actions[3, 1] = np.nan
    return EpisodeData(instruction="insert", actions=actions, actions_t=t, action_names=list("abcd"),
                       state=np.arange(n * 3, dtype=np.float32).reshape(n, 3), state_t=t,
                       sensor=np.ones((5 * n, 2), np.float32), sensor_t=np.arange(5 * n) * 0.02,
                       images={v: np.zeros((n, 8, 8, 3), np.uint8) for v in views},
                       images_t={v: t for v in views})


def test_write_and_read_round_trip(tmp_path):
    path = write_episode(tmp_path, "episode_000000", _episode())
    (ep,) = list_episodes(tmp_path)
    assert ep.path == path and ep.length == 20 and ep.views == ["front"] and ep.instruction == "insert"
    assert isinstance(ep.array("sensor"), np.memmap)  # large streams load lazily
    ep.validate()
    assert json.loads((path / "meta.json").read_text())["rates_hz"]["sensor"] == pytest.approx(50.0)


def test_interrupted_write_leaves_nothing_that_loads(tmp_path, monkeypatch):
    import vla_training.episodes as episodes

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(episodes.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_episode(tmp_path, "episode_000000", _episode())
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too
    with pytest.raises(DatasetError, match="contains no episodes"):
        list_episodes(tmp_path)


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.unlink_file("actions.npy"), ["field 'actions'", "missing file actions.npy"]),
    (lambda d: d.unlink_file("meta.json"), ["missing meta.json"]),
    (lambda d: d.write("meta.json", "{oops"), ["not valid JSON"]),
])
def test_malformed_episodes_name_episode_and_field(tmp_path, mutate, words):
    path = write_episode(tmp_path, "episode_000000", _episode())

    class Dir:
        def unlink_file(self, name):
            (path / name).unlink()

        def write(self, name, text):
            (path / name).write_text(text)

    mutate(Dir())
    with pytest.raises(DatasetError) as info:
        list_episodes(tmp_path)[0].array("actions")
    for word in words + ["episode_000000"]:
        assert word in str(info.value)


def test_nan_and_path_escape_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="field 'actions': contains NaN"):
        write_episode(tmp_path, "episode_000000", _episode(nan=True))
    with pytest.raises(DatasetError, match="no path separators"):
        write_episode(tmp_path, "../escape", _episode())
    with pytest.raises(DatasetError, match="view name"):
        write_episode(tmp_path, "ok", _episode(views=("../x",)))


def test_samples_windows_and_padding(tmp_path):
    write_episode(tmp_path, "episode_000000", _episode())
    config = preset("cpu", **{"sensor.channels": 2, "state.dim": 3, "horizon": 4})
    ds = ChunkDataset(list_episodes(tmp_path), config, sensor_window=8)
    first, last = ds[0], ds[len(ds) - 1]
    assert first[OBS_SENSOR].shape == (8, 2) and first[OBS_SENSOR][:-1].sum() == 0  # zero-padded at the front
    assert bool(first[OBS_SENSOR_MASK])
    assert np.array_equal(ds[5][OBS_STATE], [15, 16, 17])  # the state at t, never a later one
    assert last[ACTION_IS_PAD].tolist() == [False, True, True, True]
    assert np.all(last[ACTION][1:] == 0)  # padded rows are zeros, excluded from the loss, not repeated data
    batch = collate([ds[0], ds[1]])
    assert batch[ACTION].shape == (2, 4, 4) and batch[OBS_SENSOR].shape == (2, 8, 2)


def test_dataset_must_match_the_policy(tmp_path):
    write_episode(tmp_path, "episode_000000", _episode())
    with pytest.raises(DatasetError, match="field 'sensor': 2 channels; the policy config has sensor.channels 12"):
        ChunkDataset(list_episodes(tmp_path), preset("cpu", **{"state.dim": 3}))
    tiny = preset("tiny", **{"sensor.channels": 2, "state.dim": 3})
    with pytest.raises(DatasetError, match=r"missing view\(s\) \['wrist'\]"):
        ChunkDataset(list_episodes(tmp_path), tiny)


def test_split_is_by_episode(tmp_path):
    for i in range(10):
        write_episode(tmp_path, f"episode_{i:06d}", _episode())
    train, val = split_episodes(list_episodes(tmp_path), 0.2, seed=0)
    assert len(val) == 2 and not {e.name for e in train} & {e.name for e in val}


def test_sim_demos_and_info(tmp_path, capsys):
    out = tmp_path / "sim"
    assert vla(["data", "sim", "--out", str(out), "--episodes", "2", "--modes", "2", "--image-size", "32",
                "--no-progress"]) == 0
    episodes = list_episodes(out)
    assert len(episodes) == 2 and all(ep.meta["success"] and ep.meta["mode"] in (-1, 1) for ep in episodes)
    ep = episodes[0]
    assert ep.array("images/corner").shape[1:] == (32, 32, 3) and ep.array("sensor").shape[1] == 12
    rates = ep.meta["rates_hz"]
    assert rates["sensor"] == pytest.approx(5 * rates["control"])  # several sensor samples per control step
    assert np.abs(np.asarray(ep.array("sensor"))).max() > 0.1  # contact forces were measured
    assert np.abs(np.asarray(ep.array("actions"))).max() <= 1.0  # executed (clipped) actions
    assert vla(["data", "info", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "episodes     2" in text and "sensor       12 channels" in text and "every array read" in text


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 16, 3), value, np.uint8))


def _states_csv(path: Path, times: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["recv_timestamp", "origin_timestamp", "send_timestamp", "force_placeholder"]
                        + [f"joint_{i}" for i in range(1, 7)] + ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"])
        for k, t in enumerate(times):
            writer.writerow([t, t, t, 0] + [0.1 * k] * 6 + [10.0 * k + 0.001 * k * k, 2.0 * k, 0, 0, 0, 0.5 * k])


def _sensor_npz(path: Path, t0: float, n: int = 400) -> None:
    t = t0 + np.arange(n) / 650
    np.savez(path, timestamps=t, forces=np.sin(t), alines=np.random.default_rng(0).normal(size=(n, 1025)))


def make_seed_legacy(root: Path) -> Path:
    session = root / "Needle_insertion_eye_trocar" / "recv_all_20251027_120000"
    t0 = 1761551500.0
    for k in range(4):
        t = t0 + 0.5 * k
        for view in range(1, 5):
            _jpeg(session / f"View{view}" / "left" / f"zed_41182735_left_{t:.3f}.jpg", 40 * k)
            _jpeg(session / f"View{view}" / "right" / f"zed_41182735_right_{t:.3f}.jpg", 40 * k)
        _jpeg(session / "View5" / f"oak_{t + 0.004:.3f}.jpg", 40 * k)
    _states_csv(session / "robot_state_20251027_120000.csv", t0 + np.arange(0, 200) * 0.01)
    _sensor_npz(session / "sensor_data_20251027_120000.npz", t0)
    return session


def make_seed_episode(root: Path) -> Path:
    session = root / "Needle_insertion_eye_trocar" / "episode_20251101_090000"
    t0 = 1762000000.0
    views = ["View1", "View2", "View5"]
    (session / "images").mkdir(parents=True)
    (session / "metadata.json").write_text(json.dumps({"robot_hz": 100, "sensor_hz": 650, "sensor_window_size": 650,
                                                       "camera_views": views}))
    for k in range(5):
        for view in views:
            _jpeg(session / "images" / view / f"{t0 + 0.5 * k:.3f}.jpg", 30 * k)
    _states_csv(session / "robot_states.csv", t0 + np.arange(0, 250) * 0.01)
    _sensor_npz(session / "sensor_data.npz", t0)
    np.savez(session / "actions.npz", actions=np.zeros((5, 7)))
    return session


@pytest.mark.parametrize("make, views, steps", [(make_seed_legacy, 5, 3), (make_seed_episode, 3, 4)])
def test_import_seed_layouts(tmp_path, make, views, steps):
    make(tmp_path / "src")
    (path,) = import_seed(tmp_path / "src", tmp_path / "out", progress=False)
    (ep,) = list_episodes(tmp_path / "out")
    ep.validate()
    assert ep.instruction == "needle insertion eye trocar"
    assert len(ep.views) == views and ep.length == steps
    actions = np.asarray(ep.array("actions"))
    assert np.allclose(actions[:, 0], 500.0, atol=30) and np.allclose(actions[:, 1], 100.0)  # deltas over 0.5 s (mm)
    assert np.allclose(actions[:, 6], 1.0)  # the seed's constant gripper, kept and flagged
    assert ep.meta["constant_action_dims"] == ["dy", "dz", "da", "db", "dr", "gripper"]
    assert ep.array("sensor").shape == (400, 1026) and ep.array("state").shape[1] == 12


def test_import_seed_errors_name_the_session_and_field(tmp_path):
    session = make_seed_legacy(tmp_path / "src")
    (session / "robot_state_20251027_120000.csv").unlink()
    with pytest.raises(DatasetError, match="recv_all_20251027_120000: field 'robot_state': missing"):
        import_seed(tmp_path / "src", tmp_path / "out", progress=False)
    session = make_seed_episode(tmp_path / "src2")
    np.savez(session / "sensor_data.npz", timestamps=np.arange(3.0), forces=np.zeros(2), alines=np.zeros((3, 1025)))
    with pytest.raises(DatasetError, match="episode_20251101_090000: field 'sensor': expected timestamps"):
        import_seed(tmp_path / "src2", tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() or list((tmp_path / "out2").iterdir()) == []
