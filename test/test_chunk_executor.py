"""ChunkExecutor contracts: time indexing (no action from the past), ordering, receding horizon,
temporal ensembling, holding when starved, and the jitter figures."""

import numpy as np
import pytest

from vla_models.runtime.chunk_executor import ChunkExecutor

DT = 0.1


def ramp(start: float, horizon: int = 8, dim: int = 2) -> np.ndarray:
    """Chunk whose action i is (start + i) in every dimension: the value tells which action ran."""
    return np.repeat((start + np.arange(horizon, dtype=float))[:, None], dim, axis=1)


def test_actions_are_indexed_by_time_and_past_ones_are_skipped():
    ex = ChunkExecutor(DT)
    ex.add_chunk(10.0, ramp(0))
    # the chunk arrives 0.25 s after its observation: actions 0 and 1 are past, 2 is due
    out = ex.action_at(10.25)
    assert out.index == 2 and out.action[0] == 2
    assert ex.counts["skipped_past"] == 2
    assert ex.action_at(10.3).index == 3
    # never an action scheduled before `now`
    for now in np.arange(10.3, 10.8, 0.05):
        a = ex.action_at(now)
        assert 10.0 + a.index * DT <= now + 1e-9 < 10.0 + (a.index + 1) * DT


def test_out_of_order_chunks_are_dropped():
    ex = ChunkExecutor(DT)
    assert ex.add_chunk(1.0, ramp(0))
    assert not ex.add_chunk(0.9, ramp(100))  # older than the newest: dropped
    assert not ex.add_chunk(1.0, ramp(100))  # same stamp: dropped
    assert ex.counts["out_of_order"] == 2
    assert ex.action_at(1.0).action[0] == 0


def test_receding_horizon_executes_at_most_execute_steps_then_holds():
    ex = ChunkExecutor(DT, execute_steps=3)
    ex.add_chunk(0.0, ramp(0))
    got = [ex.action_at(i * DT) for i in range(5)]
    assert [g.action[0] for g in got[:3]] == [0, 1, 2]
    assert got[3] is None and got[4] is None  # starved: the caller holds position
    assert ex.counts["starved"] == 2
    ex.add_chunk(0.4, ramp(50))  # a new chunk takes over at its own index
    assert ex.action_at(0.5).action[0] == 51


def test_newest_chunk_wins_in_receding_mode():
    ex = ChunkExecutor(DT)
    ex.add_chunk(0.0, ramp(0))
    ex.add_chunk(0.2, ramp(100))
    out = ex.action_at(0.3)
    assert out.chunk_stamp == 0.2 and out.action[0] == 101


def test_expired_chunks_are_forgotten():
    ex = ChunkExecutor(DT)
    ex.add_chunk(0.0, ramp(0, horizon=4))
    assert ex.action_at(0.35) is not None
    assert ex.action_at(0.4) is None  # past the chunk's horizon
    assert not ex.chunks


def test_temporal_ensembling_weights_older_chunks_first():
    ex = ChunkExecutor(DT, mode="temporal", decay=0.5)
    ex.add_chunk(0.0, ramp(0))
    ex.add_chunk(0.1, ramp(100))
    out = ex.action_at(0.2)  # chunk 1 gives action 2 (= 2), chunk 2 gives action 1 (= 101)
    w = np.exp(-0.5 * np.arange(2))
    w /= w.sum()
    assert out.chunks == 2
    assert out.action[0] == pytest.approx(w[0] * 2 + w[1] * 101)


def test_temporal_ensembling_smooths_chunk_boundaries():
    """Two executors, same noisy chunks: ensembling gives smaller jumps where chunks change."""
    rng = np.random.default_rng(0)
    runs = {}
    for mode in ("receding", "temporal"):
        ex = ChunkExecutor(DT, mode=mode, execute_steps=4 if mode == "receding" else 0)
        rng = np.random.default_rng(0)
        for step in range(200):
            now = step * DT
            if step % 4 == 0:  # a new chunk every 4 ticks: the true ramp plus per-chunk noise
                ex.add_chunk(now, ramp(step)[:, :1] + rng.normal(0, 2.0))
            ex.action_at(now)
        runs[mode] = ex.jitter()
    assert runs["receding"]["boundary"]["n"] > 40
    assert runs["temporal"]["boundary"]["mean"] < runs["receding"]["boundary"]["mean"]


@pytest.mark.parametrize("kwargs", [{"dt": 0}, {"dt": DT, "mode": "blend"}, {"dt": DT, "execute_steps": -1}])
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ChunkExecutor(**kwargs)


def test_non_finite_chunks_are_rejected():
    ex = ChunkExecutor(DT)
    with pytest.raises(ValueError, match="finite"):
        ex.add_chunk(0.0, np.full((4, 2), np.nan))
