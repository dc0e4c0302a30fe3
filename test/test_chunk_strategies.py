"""Executing chunks while the next one is inferred (evaluation/chunk_execution.py): switch, temporal ensembling and
real-time chunking under a delay in control steps, in the closed loop (`vla eval --chunk-execution --delay`)."""

import json

import numpy as np
import pytest
from conftest import make_policy

from vla_models import ConfigError
from vla_training.cli import main as vla
from vla_training.evaluation.chunk_execution import DelayedChunks


def _chunk(base: float, horizon: int = 8) -> np.ndarray:
    """(H, 1): row i = base + i, so an executed action names its chunk and row."""
    return (base + np.arange(horizon, dtype=float))[:, None]


def _drive(runner: DelayedChunks, steps: int) -> list:
    executed = []
    for step in range(steps):
        if runner.due(step):
            runner.submit(step, _chunk(100.0 * (step + 1)))
        action = runner.action(step)
        executed.append(None if action is None else float(action[0]))
    return executed


def test_switch_without_delay_is_the_receding_horizon():
    # chunks observed at 0, 3, 6 (execute 3): rows 0..2 of each, in order
    assert _drive(DelayedChunks("switch", 0, 3, 8), 9) == [100, 101, 102, 400, 401, 402, 700, 701, 702]


def test_switch_with_delay_runs_the_old_chunk_until_the_new_one_arrives():
    # delay 2: a hold before the first chunk; chunk 1 (observed at 0) runs until chunk 2 (observed at 3) arrives at
    # 5, which starts at its row 2 (its first two rows are in the past)
    assert _drive(DelayedChunks("switch", 2, 3, 8), 9) == [None, None, 102, 103, 104, 402, 403, 404, 702]


def test_ensemble_averages_the_chunks_that_cover_a_step():
    executed = _drive(DelayedChunks("ensemble", 0, 3, 8), 6)
    assert executed[:3] == [100, 101, 102]  # one chunk
    w = np.exp(-0.01 * np.arange(2)) / np.exp(-0.01 * np.arange(2)).sum()  # ChunkExecutor's decay, oldest first
    assert executed[3] == pytest.approx(w[0] * 103 + w[1] * 400)


def test_rtc_inpaints_with_the_rows_that_execute_during_inference():
    runner = DelayedChunks("rtc", 2, 3, 8)
    assert runner.inpaint(0) is None  # nothing executes yet
    runner.submit(0, _chunk(100.0))
    for step in range(3):
        runner.action(step)
    inpaint = runner.inpaint(3)  # observed at 3: the current chunk's rows 3.. ; the first 2 execute meanwhile
    assert inpaint.delay == 2 and inpaint.previous[0, :, 0].tolist() == [103, 104, 105, 106, 107]
    assert DelayedChunks("switch", 2, 3, 8).inpaint(3) is None


@pytest.mark.parametrize("args, message", [
    (("rtc", 2, 4, 8, False), "predicts a chunk in one pass"),
    (("switch", 5, 4, 8, True), r"execute \+ delay: expected 1..8"),
    (("average", 0, 4, 8, True), "chunk_execution: expected one of"),
    (("switch", -1, 4, 8, True), "delay: expected control steps >= 0"),
])
def test_bad_settings_are_named_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        DelayedChunks(*args)


@pytest.mark.parametrize("expert, strategy", [("regression", "switch"), ("regression", "ensemble"),
                                              ("flow", "rtc"), ("diffusion", "rtc")])
def test_closed_loop_under_delay_pools_placement_sets(tmp_path, expert, strategy):
    make_policy("cpu", expert).save(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    steps = [] if expert == "regression" else ["--steps", "3"]
    assert vla(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--sim", "peg-insert-side-v3", "--episodes", "1",
                "--placement-seeds", "1,2", "--max-steps", "12", "--execute", "4", "--chunk-execution", strategy,
                "--delay", "2", *steps, "--json", str(out), "--no-progress"]) == 0
    (result,) = json.loads(out.read_text())["closed_loop"].values()
    assert result["chunk_execution"] == strategy and result["delay"] == 2
    assert result["episodes"] == 2 and set(result["per_placement_set"]) == {"1", "2"}
    assert all(e["length"] == 12 and e["chunks"] == 3 for e in result["per_episode"])
    assert result["boundary_jerk"]["n"] == 2


def test_rtc_with_a_one_pass_expert_stops_before_any_episode(tmp_path, capsys):
    make_policy("cpu", "regression").save(tmp_path / "ckpt")
    assert vla(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--sim", "peg-insert-side-v3", "--episodes", "1",
                "--chunk-execution", "rtc", "--delay", "2", "--no-progress"]) == 2
    assert "predicts a chunk in one pass" in capsys.readouterr().err


def test_absolute_targets_without_delay_move_the_hand_as_the_deltas_do(tmp_path):
    """--targets absolute (the pose_target interface's execution): with nothing skipped, a chunk's targets are
    where its deltas lead, so the closed loop is the delta loop; under delay the targets keep the displacement of
    the rows that were skipped, and the hand ends elsewhere. rtc cannot guide absolute targets: a named error."""
    from vla_training.evaluation.evaluate import closed_loop

    policy = make_policy("cpu", "regression")
    runs = {(targets, delay): closed_loop(policy, "peg-insert-side-v3", 1, 1, execute=4, max_steps=12, progress=False,
                                          targets=targets, delay=delay)["per_episode"][0]["final_hand"]
            for targets in ("delta", "absolute") for delay in (0, 2)}
    np.testing.assert_allclose(runs["absolute", 0], runs["delta", 0], atol=1e-6)
    assert not np.allclose(runs["absolute", 2], runs["delta", 2], atol=1e-4)
    for bad in ({"targets": "absolute", "chunk_execution": "rtc"}, {"targets": "relative"}):
        with pytest.raises(ConfigError, match="targets"):
            closed_loop(make_policy("cpu", "flow"), "peg-insert-side-v3", 1, 1, max_steps=4, progress=False, delay=2,
                        **bad)


def test_two_sampling_seeds_draw_independent_noise_in_a_closed_loop():
    """Seed s's chunks must not reuse seed s+1's draws: a counter from the sampling seed shared all but one, and
    two runs whose chunk counts drifted by one ran identical episodes (49 of 50 in a demo run)."""
    from vla_training.evaluation.evaluate import chunk_seed

    draws = {s: [chunk_seed(s, episode, chunk) for episode in range(50) for chunk in range(40)] for s in (0, 1)}
    assert len(set(draws[0])) == len(draws[0]) and not set(draws[0]) & set(draws[1])
    assert chunk_seed(0, 3, 7) == chunk_seed(0, 3, 7)  # reproducible
