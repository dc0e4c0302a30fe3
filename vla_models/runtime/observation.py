"""Observation assembly shared by policy_node and `vla bag-eval` (pure Python: no ROS needed).

The newest synchronised set of views + state, and the sensor window that ends at its stamp, as the
policy's observation dict (batch 1). The same function serves the live node and the offline bag
replay, so both see the same observations for the same messages.
"""

from __future__ import annotations

import numpy as np

from .sensor_buffer import SensorRingBuffer
from .state_history import StateHistory
from .synchronizer import ApproximateSynchronizer

STATE_KEY = "state"
WAITING_FOR_SENSOR = "waiting_for_sensor"


def assemble(sync: ApproximateSynchronizer, sensor: SensorRingBuffer | None, views, sensor_window: int,
             instruction: str, max_sensor_lag_s: float, state: StateHistory | None = None):
    """(stamp, observation) for the newest matching set; None while inputs are missing; or
    WAITING_FOR_SENSOR while the set's sensor window is empty (no sample yet, or none as old as the
    set) or the newest sample is older than the set by more than the lag: a policy trained with the
    sensor never acts without it.

    `state`: a time-based state history looked up (interpolated) at the views' stamp, for a state
    stream much faster than the cameras; without views the newest state sets the stamp. Without it,
    the state (if any) is one of the synchroniser's inputs under STATE_KEY."""
    obs: dict = {}
    if sync.names:
        matched = sync.latest()
        if matched is None:
            return None
        stamp, chosen = matched
        if views:
            obs["images"] = {v: chosen[v][1][None] for v in views}
            obs["instruction"] = [instruction]
        if STATE_KEY in chosen:
            obs["state"] = chosen[STATE_KEY][1][None]
    elif state is not None:
        newest = state.newest()
        if newest is None:
            return None
        stamp = newest[0]
    else:
        stamp = sensor.newest_stamp() if sensor is not None else None
        if stamp is None:
            return None
    if state is not None:
        value = state.at(stamp)
        if value is None:  # no state around the views' stamp (yet)
            return None
        obs["state"] = value.astype(np.float32)[None]
    if sensor is not None:
        newest, inputs = sensor.newest_stamp(), sensor_inputs(sensor, sensor_window, stamp)
        if newest is None or newest < stamp - max_sensor_lag_s or not inputs["sensor_mask"][0]:
            return WAITING_FOR_SENSOR  # no sample yet, samples still on their way, or none as old as the set
        obs.update(inputs)
    return stamp, obs


def sensor_inputs(sensor: SensorRingBuffer, length: int, until: float) -> dict:
    """The window of up to `length` samples stamped <= `until` as `sensor` (1, T, C) and `sensor_mask`
    (1,); without any sample, one zero sample masked out."""
    window = sensor.window(length, until=until)
    has_data = len(window) > 0
    return {"sensor": (window if has_data else np.zeros((1, sensor.channels), np.float32))[None],
            "sensor_mask": np.array([has_data])}
