"""`vla bag-eval`: a policy on a recorded rosbag2, offline (rosbags, no ROS), or its live outputs.

Offline: the bag's streams are fed in stamp order into the node's own synchroniser and sensor
buffer (vla_models.runtime.observation.assemble), and at each anchor (camera frame, or state message
without cameras) the observation the node would have built is given to the policy. Live: with
`chunks_topic`, the ActionChunk messages a node published during a replay (recorded in the bag)
are taken instead, each matched to the anchor it was computed from (its stamp).

Path error: the predicted chunk's integrated path vs the recorded future (the bag's actions at the
following anchors, integrated), over the first 3 action dimensions, in mm (`mm_per_unit`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_models.runtime import (STATE_KEY, WAITING_FOR_SENSOR, ApproximateSynchronizer, SensorRingBuffer, StateHistory,
                                assemble)

from ..data.episodes import DatasetError
from .evaluate import summarise
from ..data.import_bag import load_recording, load_topic_map


class _Frames:
    """A view's frames of an Episode, indexable (decoded one at a time)."""

    def __init__(self, episode, view: str) -> None:
        self.episode, self.view = episode, view

    def __getitem__(self, k: int) -> np.ndarray:
        return self.episode.frame(self.view, k)


class _Recording:
    """An imported bag's streams under the names `_observations` reads (arrays memory-mapped)."""

    def __init__(self, episode) -> None:
        self.instruction = episode.instruction
        self.actions, self.actions_t = episode.array("actions"), np.asarray(episode.array("actions_t"))
        self.images = {v: _Frames(episode, v) for v in episode.views}
        self.images_t = {v: np.asarray(episode.array(f"images/{v}_t")) for v in episode.views}
        for key in ("state", "sensor"):
            has = episode.has(key)
            setattr(self, key, episode.array(key) if has else None)
            setattr(self, f"{key}_t", np.asarray(episode.array(f"{key}_t")) if has else None)


def _observations(data, config, slop: float, max_frames: int | None):
    """(anchor index, stamp, observation) as the node would assemble them from the bag's streams."""
    views = list(config.views)
    missing = [v for v in views if v not in data.images]
    if missing:
        raise DatasetError(f"views {missing}: the policy needs them; the topic map gives {sorted(data.images)}")
    if config.state.dim and (data.state is None or data.state.shape[1] != config.state.dim):
        got = None if data.state is None else data.state.shape[1]
        raise DatasetError(f"field 'state': the policy expects {config.state.dim} values, the bag has {got}")
    if config.sensor.channels and (data.sensor is None or data.sensor.shape[1] != config.sensor.channels):
        got = None if data.sensor is None else data.sensor.shape[1]
        raise DatasetError(f"field 'sensor': the policy expects {config.sensor.channels} channels, the bag has {got}")
    sync = ApproximateSynchronizer(views, slop)
    state = StateHistory(tolerance_s=slop) if config.state.dim else None  # as the node: interpolated at the views
    sensor = SensorRingBuffer(4 * config.sensor.window, config.sensor.channels) if config.sensor.channels else None
    cursors = {v: 0 for v in views} | {STATE_KEY: 0, "sensor": 0}
    streams = {v: (data.images_t[v], data.images[v]) for v in views}
    if config.state.dim:
        streams[STATE_KEY] = (data.state_t, np.asarray(data.state, np.float32))
    anchors = data.actions_t if max_frames is None else data.actions_t[:max_frames]
    for k, t in enumerate(anchors):
        for name, (stamps, values) in streams.items():
            while cursors[name] < len(stamps) and stamps[cursors[name]] <= t + 1e-9:
                if name == STATE_KEY:
                    state.add(float(stamps[cursors[name]]), values[cursors[name]])
                else:
                    sync.add(name, float(stamps[cursors[name]]), values[cursors[name]])
                cursors[name] += 1
        if sensor is not None:
            end = int(np.searchsorted(data.sensor_t, t + 1e-9, side="right"))
            if end > cursors["sensor"]:
                sensor.extend(data.sensor_t[cursors["sensor"]:end], data.sensor[cursors["sensor"]:end])
                cursors["sensor"] = end
        result = assemble(sync, sensor, views, config.sensor.window, data.instruction, max_sensor_lag_s=np.inf,
                          state=state)
        if result is None or result == WAITING_FOR_SENSOR:
            continue
        yield k, result[0], result[1]


def _live_chunks(bag: str | Path, topic: str) -> list[tuple[float, np.ndarray, dict]]:
    """(stamp, chunk (H, A), stage latencies) of the ActionChunk messages recorded on `topic`."""
    from rosbags.highlevel import AnyReader

    from ..data.import_bag import typestore

    out = []
    with AnyReader([Path(bag)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            raise DatasetError(f"{bag}: no topic {topic}; it has {sorted(c.topic for c in reader.connections)}")
        for conn, _, raw in reader.messages(connections=conns):
            m = reader.deserialize(raw, conn.msgtype)
            stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            chunk = np.asarray(m.actions, np.float32).reshape(m.horizon, m.action_dim)
            out.append((stamp, chunk, {"total_ms": float(m.latency_ms),
                                       **{n: float(v) for n, v in zip(m.stage_names, m.stage_latency_ms)}}))
    return out


def bag_eval(bag: str | Path, checkpoint: str | Path | None, topics: str | Path, chunks_topic: str | None = None,
             mm_per_unit: float | None = None, max_frames: int | None = None, slop_s: float = 0.05,
             sampler: str | None = None, steps: int | None = None, seed: int = 0, plot: str | Path | None = None,
             progress: bool = True, device: str | None = None, backbone: str | None = None) -> dict:
    spec = load_topic_map(topics)
    workdir = tempfile.TemporaryDirectory(prefix="vla-bag-eval-")
    data = _Recording(load_recording(bag, spec, workdir.name))  # streamed to disk, read lazily
    scale = float(mm_per_unit or spec.get("mm_per_action_unit", 1.0))
    predictions: dict[int, np.ndarray] = {}
    latencies: list[dict] = []
    if chunks_topic:  # live: the node's own outputs, matched to the anchors they were computed from
        anchors = data.actions_t
        for stamp, chunk, timing in _live_chunks(bag, chunks_topic):
            k = int(np.argmin(np.abs(anchors - stamp)))
            if abs(anchors[k] - stamp) <= slop_s:
                predictions[k] = chunk
                latencies.append(timing)
        source = f"live: {chunks_topic}"
    else:
        from .evaluate import load_for_eval, sampling_options

        policy = load_for_eval(checkpoint, device, backbone)
        overrides = sampling_options(policy, sampler, steps)
        frames = list(_observations(data, policy.config, slop_s, max_frames))
        for k, _, obs in tqdm(frames, desc="bag-eval", disable=not progress, unit="frame"):
            start = time.perf_counter()
            predictions[k] = policy.predict_action_chunk(obs, seed=seed, **overrides)[0].cpu().numpy()
            latencies.append({**policy.last_timings, "total_ms": (time.perf_counter() - start) * 1e3})
        source = f"offline: {checkpoint}"
    if not predictions:
        raise DatasetError(f"{bag}: no observation could be assembled (or no chunk matched an anchor)")
    truth = np.asarray(data.actions, np.float32)
    dims = min(3, truth.shape[1])
    errors, per_step = [], {}
    for k, chunk in predictions.items():
        n = min(len(chunk), len(truth) - k)
        pred_path = np.cumsum(chunk[:n, :dims], axis=0) * scale
        true_path = np.cumsum(truth[k:k + n, :dims], axis=0) * scale
        dist = np.linalg.norm(pred_path - true_path, axis=1)
        errors.extend(dist.tolist())
        for h, d in enumerate(dist):
            per_step.setdefault(h, []).append(float(d))
    stages = sorted({s for t in latencies for s in t})
    result = {"bag": str(bag), "source": source, "anchors": int(len(truth)), "evaluated": len(predictions),
              "mm_per_unit": scale, "path_error_mm": summarise(errors),
              "per_step_mean_mm": [statistics.mean(per_step[h]) for h in sorted(per_step)],
              "latency_ms": {s: summarise(t[s] for t in latencies if s in t) for s in stages},
              "predictions": {int(k): v.tolist() for k, v in sorted(predictions.items())}}
    if plot:
        result["plot"] = str(_plot(truth[:, :dims] * scale, predictions, scale, dims, Path(plot)))
    return result


def _plot(truth_mm: np.ndarray, predictions: dict, scale: float, dims: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = np.vstack([np.zeros((1, dims)), np.cumsum(truth_mm, axis=0)])  # recorded positions at the anchors
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(path[:, 0], path[:, 1] if dims > 1 else np.zeros(len(path)), color="black", lw=2, label="recorded")
    keys = sorted(predictions)
    for i, k in enumerate(keys[:: max(1, len(keys) // 15)]):
        pred = path[k] + np.vstack([np.zeros((1, dims)), np.cumsum(predictions[k][:, :dims] * scale, axis=0)])
        ax.plot(pred[:, 0], pred[:, 1] if dims > 1 else np.zeros(len(pred)), color="tab:orange", alpha=0.7,
                label="predicted chunks" if i == 0 else None)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
