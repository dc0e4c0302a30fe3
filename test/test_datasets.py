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
from vla_training.data.episodes import DatasetError, EpisodeData, list_episodes, write_episode
from vla_training.data.import_seed import import_seed
from vla_training.data.samples import ChunkDataset, collate, split_episodes
from seed_recordings import episode_session, legacy_session


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
    import vla_training.data.episodes as episodes

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


@pytest.mark.parametrize("task", ["hand-insert-v3", "pick-place-v3"])
def test_sim_demos_of_other_tasks_sense_their_own_object(tmp_path, task):
    """The sensed body is each task's manipulated object (its one free body), not a hard-coded peg."""
    out = tmp_path / task
    assert vla(["data", "sim", "--task", task, "--out", str(out), "--episodes", "1", "--views", "",
                "--no-progress"]) == 0
    (ep,) = list_episodes(out)
    assert ep.meta["success"] and ep.meta["instruction"] == task.removesuffix("-v3").replace("-", " ")
    sensor = np.abs(np.asarray(ep.array("sensor")))
    assert sensor[:, :6].max() > 0.1  # contact on the object (grasp, table) was measured


@pytest.mark.parametrize("args, words", [(["--task", "no-such-task-v3"], ["no-such-task-v3", "expected one of"]),
                                         (["--task", "hand-insert-v3", "--modes", "2"], ["--modes 2", "peg-insert-side"])])
def test_sim_demos_of_unsupported_tasks_are_clear_errors(tmp_path, capsys, args, words):
    assert vla(["data", "sim", "--out", str(tmp_path / "x"), "--episodes", "1", "--views", "", *args,
                "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


@pytest.mark.parametrize("layout", ["legacy", "episode"])
def test_import_seed_layouts(tmp_path, layout):
    if layout == "legacy":
        legacy_session(tmp_path / "src", "recv_all_20251027_120000", 1761551500.0)
        views, steps = 5, 4
    else:
        _, (stream_t, stream, ends, window) = episode_session(tmp_path / "src", "episode_20251101_090000", 1762000000.0)
        views, steps = 3, 4
    (path,) = import_seed(tmp_path / "src", tmp_path / "out", progress=False)
    (ep,) = list_episodes(tmp_path / "out")
    ep.validate()
    assert ep.instruction == "needle insertion eye trocar"
    assert len(ep.views) == views and ep.length == steps
    actions = np.asarray(ep.array("actions"))
    assert np.allclose(actions[:, 0], 500.0, atol=30) and np.allclose(actions[:, 1], 100.0)  # deltas over 0.5 s (mm)
    assert np.allclose(actions[:, 5], 10.0, atol=1e-6)  # r crosses +-180 within the session: 50 x 0.2 deg, wrapped
    assert np.allclose(actions[:, 6], 1.0)  # the seed's constant gripper, kept and flagged
    assert ep.meta["constant_action_dims"] == ["dy", "dz", "da", "db", "dr", "gripper"]  # dr: wrapped, constant
    assert ep.array("state").shape[1] == 12 and ep.meta["state_names"][:2] == ["joint_1", "joint_2"]
    if layout == "episode":  # the overlapping windows become the stream again, sample for sample
        first = ends[0] - window + 1
        assert np.allclose(np.asarray(ep.array("sensor_t")), stream_t[first:ends[-1] + 1], atol=1e-6)
        assert np.array_equal(np.asarray(ep.array("sensor")), stream[first:ends[-1] + 1])
    assert ep.image_storage["View1"] == "encoded"  # JPEGs kept as recorded


def test_import_seed_errors_name_the_session_and_field(tmp_path):
    session = legacy_session(tmp_path / "src", "recv_all_20251027_120000", 1761551500.0)
    (session / "robot_state_20251027_120000.csv").unlink()
    with pytest.raises(DatasetError, match="recv_all_20251027_120000: field 'robot_state': missing"):
        import_seed(tmp_path / "src", tmp_path / "out", progress=False)
    session, _ = episode_session(tmp_path / "src2", "episode_20251101_090000", 1762000000.0)
    np.savez(session / "sensor_data.npz", timestamps=np.arange(3.0), forces=np.zeros(2), alines=np.zeros((3, 1025)))
    with pytest.raises(DatasetError, match="episode_20251101_090000: field 'sensor': sensor_data.npz: expected timestamps"):
        import_seed(tmp_path / "src2", tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() or list((tmp_path / "out2").iterdir()) == []
    np.savez(session / "sensor_data.npz", timestamps=np.arange(3.0), values=np.zeros((3, 4)))
    with pytest.raises(DatasetError, match=r"sensor_data.npz has keys \['timestamps', 'values'\]; expected timestamps \+ "
                                           "forces"):
        import_seed(tmp_path / "src2", tmp_path / "out2", progress=False)
