"""Safety logic: output limits (property tests with hypothesis), stamp guard, watchdog."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla_policy_ros.safety import OutputLimits, StampGuard, Watchdog

values = st.floats(allow_nan=True, allow_infinity=True, width=32)
finite = st.floats(-5, 5, allow_nan=False, width=32)
LO, HI = np.array([-0.5, -0.5, 0.0]), np.array([0.5, 0.5, 0.6])


@settings(max_examples=300, deadline=None)
@given(chunk=arrays(np.float64, (8, 4), elements=values), mode=st.sampled_from(["clip", "reject"]))
def test_action_limits_hold_for_any_model_output(chunk, mode):
    limits = OutputLimits(max_delta=np.array([0.5, 0.5, 0.5, 1.0]), mode=mode)
    result = limits.apply_chunk(chunk)
    if not np.isfinite(chunk).all():
        assert result.chunk is None and result.outcome == "rejected"
    elif result.chunk is not None:
        assert np.all(np.abs(result.chunk) <= limits.max_delta + 1e-12)
        assert result.outcome in ("ok", "clipped")
        assert mode == "clip" or result.outcome == "ok"
    else:
        assert mode == "reject" and result.outcome == "rejected"


@settings(max_examples=300, deadline=None)
@given(targets=arrays(np.float64, (8, 3), elements=st.floats(-3, 3, allow_nan=False)),
       current=arrays(np.float64, (3,), elements=st.floats(-0.5, 0.5)).map(lambda c: np.clip(c, LO, HI)),
       speed=st.floats(0.01, 2.0), mode=st.sampled_from(["clip", "reject"]))
def test_target_limits_hold(targets, current, speed, mode):
    limits = OutputLimits(max_delta=np.array([np.inf]), workspace_min=LO, workspace_max=HI, max_speed=speed, mode=mode)
    dt = 0.1
    result = limits.apply_targets(targets, current, dt)
    if result.positions is None:
        assert result.outcome == "rejected" and mode == "reject"
        return
    out = result.positions
    assert np.all(out >= LO - 1e-9) and np.all(out <= HI + 1e-9)
    steps = np.linalg.norm(np.diff(np.vstack([current, out]), axis=0), axis=1)
    assert np.all(steps <= speed * dt + 1e-9)
    if result.outcome == "ok":
        assert np.array_equal(out, targets)


def test_targets_from_outside_the_workspace_are_rejected():
    limits = OutputLimits(max_delta=np.array([np.inf]), workspace_min=LO, workspace_max=HI)
    assert limits.apply_targets(np.zeros((2, 3)), np.array([2.0, 0, 0]), 0.1).outcome == "rejected"


def test_stamp_guard():
    guard = StampGuard(future_tolerance_s=1.0)
    assert guard.check("cam", 0.0, 100.0) == "zero stamp"
    assert "future" in guard.check("cam", 102.0, 100.0)
    assert guard.check("cam", 99.0, 100.0) is None
    assert "backwards" in guard.check("cam", 98.0, 100.0)
    assert guard.check("state", 98.0, 100.0) is None  # per input


def test_watchdog():
    dog = Watchdog(["front", "sensor"], timeout_s=0.5)
    assert dog.stale(10.0) == ["front", "sensor"]
    dog.feed("front", 10.0)
    dog.feed("sensor", 10.2)
    assert dog.stale(10.4) == [] and dog.stale(10.6) == ["front"]
