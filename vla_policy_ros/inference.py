"""The policy node's inference worker: threads that turn buffered inputs into action chunks.

One worker thread runs inference on the latest synchronised observation (latest wins, never two
in flight), at `rate_hz` or adaptively. With `async_inference`, a second thread runs the backbone on
each new camera frame and the expert samples at its own rate from the newest cached features plus
the freshest sensor window and state. `reset()` (a policy switch, a deactivation) drops the cached
features, so features of one policy never feed the other.

`chunk_execution: rtc` (real-time chunking, vla_models/experts/guidance.py): each inference is given the
last delivered chunk's actions from the new observation's stamp on; the first `delay` of them (what the
robot executes while this inference runs: `rtc_delay_steps`, or the mean measured age of a chunk's
observation when the chunk was handed on, / dt, rounded up) come back frozen, and the rest of the sample is guided toward them.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from vla_models.experts import Sampling
from vla_models.experts.guidance import Inpaint
from vla_models.runtime import WAITING_FOR_SENSOR, assemble, sensor_inputs

from .inputs import Inputs
from .params import rtc_reason


@dataclass
class CachedFeatures:
    policy_type: str
    stamp: float  # the frame set's stamp
    features: object  # what VLAPolicy.encode_images returned


@dataclass
class ChunkResult:
    stamp: float  # the observation's stamp
    chunk: np.ndarray  # (H, A)
    policy_type: str
    params: object  # the NodeParams snapshot the chunk was computed with
    latency_ms: float
    sensor_newest: float | None  # newest sensor sample the chunk saw
    sampling: Sampling  # how the expert sampled it (sampler, steps, label)


class InferenceWorker:
    def __init__(self, policies: dict, inputs: Inputs, snapshot, on_chunk, logger, on_fault=None,
                 dt: float = 0.1) -> None:
        """snapshot() -> (NodeParams, instruction); on_chunk(ChunkResult) publishes; on_fault(reason) is told when
        an inference gives no chunk because the model failed (an exception, non-finite actions); dt: the
        control period (seconds per chunk row)."""
        self.policies, self.inputs, self.snapshot, self.on_chunk, self.logger = policies, inputs, snapshot, on_chunk, logger
        self.on_fault = on_fault or (lambda reason: None)
        self.stats = inputs.stats
        self.latencies: collections.deque[float] = collections.deque(maxlen=10)
        self.ages: collections.deque[float] = collections.deque(maxlen=10)  # observation -> chunk handed on (s)
        self.event_times = {k: collections.deque(maxlen=50) for k in ("backbone", "chunk")}
        self.last_error = ""
        self._features: CachedFeatures | None = None
        self._last_stamp: float | None = None
        self.dt = dt
        self.previous: ChunkResult | None = None  # the last chunk handed on (rtc guides the next one toward it)
        self._generation = 0  # bumped by reset(): a chunk from an observation taken before it is dropped
        self._lock = threading.Lock()
        self._delivery = threading.Lock()  # reset() waits for a chunk being handed on: none follows a reset
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        params, _ = self.snapshot()
        self._stop.clear()
        self._threads = [threading.Thread(target=self._inference_loop, name="vla_inference", daemon=True)]
        if params.async_inference and self.inputs.spec.views:
            self._threads.append(threading.Thread(target=self._backbone_loop, name="vla_backbone", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10.0)
        self._threads = []

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def reset(self) -> None:
        """Forget cached features and the last observation (a switch, a clock jump): the next chunk is
        computed afresh, and a chunk still being computed from an observation taken before is dropped."""
        with self._delivery, self._lock:
            self._features = None
            self._last_stamp = None
            self.previous = None
            self._generation += 1

    # -- observations ------------------------------------------------------------------------------
    def assemble_observation(self) -> tuple[float, dict] | None:
        """The latest synchronised observation (batch 1) and its stamp, or None while inputs are missing."""
        params, instruction = self.snapshot()
        inp = self.inputs
        result = assemble(inp.sync, inp.sensor, inp.spec.views, inp.spec.sensor_window, instruction,
                          params.max_sensor_lag_s, state=inp.state)
        if result == WAITING_FOR_SENSOR:
            self.stats["waiting_for_sensor"] += 1
            return None
        return result

    def assemble_async_observation(self) -> tuple[float, dict, object] | None:
        """Async: the newest cached features of the active policy + the freshest sensor window and state.

        The stamp is that of the freshest input (newest sensor sample, else state, else frame). None
        while features, state or any sensor sample are missing, or features are older than
        max_feature_age_s."""
        params, _ = self.snapshot()
        with self._lock:
            cached = self._features
        if cached is None or cached.policy_type != params.policy_type:
            return None
        stamps, obs = [cached.stamp], {}
        inp = self.inputs
        if inp.state is not None:
            newest = inp.state.newest()
            if newest is None:
                return None
            stamps.append(newest[0])
            obs["state"] = newest[1].astype(np.float32)[None]
        if inp.sensor is not None:
            newest = inp.sensor.newest_stamp()
            if newest is None:  # never act on an empty sensor window
                self.stats["waiting_for_sensor"] += 1
                return None
            stamps.append(newest)
            obs.update(sensor_inputs(inp.sensor, inp.spec.sensor_window, max(stamps)))
        stamp = max(stamps)
        if stamp - cached.stamp > params.max_feature_age_s:
            self.stats["stale_features"] += 1
            return None
        return stamp, obs, cached.features

    # -- threads -------------------------------------------------------------------------------------
    def _share_cpu(self) -> None:
        """Async on a CPU: fewer intra-op threads (process-wide), so the two workers do not oversubscribe."""
        params, _ = self.snapshot()
        if params.async_inference and torch.device(params.device).type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    def _backbone_loop(self) -> None:
        self._share_cpu()
        done: tuple[str, tuple] | None = None
        views = self.inputs.spec.views
        while not self._stop.is_set():
            matched = self.inputs.sync.latest()
            params, instruction = self.snapshot()
            frame = tuple(matched[1][v][0] for v in views) if matched else None
            if matched is None or (params.policy_type, frame) == done:
                self._stop.wait(0.002)
                continue
            chosen = matched[1]
            obs = {"images": {v: chosen[v][1][None] for v in views}, "instruction": [instruction]}
            try:
                features = self.policies[params.policy_type].encode_images(obs)
            except Exception as exc:  # noqa: BLE001 - reported in status; the node keeps serving
                self.stats["backbone_errors"] += 1
                self.last_error = f"backbone: {type(exc).__name__}: {exc}"
                self.on_fault(f"model failed: {self.last_error}")
                self._stop.wait(0.1)
                continue
            with self._lock:
                if self.snapshot()[0].policy_type == params.policy_type:  # not switched meanwhile
                    self._features = CachedFeatures(params.policy_type, max(frame), features)
            done = (params.policy_type, frame)
            self.stats["backbone_runs"] += 1
            self.event_times["backbone"].append(time.monotonic())

    def rtc_inpaint(self, params, stamp: float, sampler: str) -> Inpaint | None:
        """rtc: the previous chunk's rows from `stamp` on and how many execute during this inference; None
        without a previous chunk of this policy that still covers `stamp` (or when rtc does not apply)."""
        previous = self.previous
        prefix_max = self.policies[params.policy_type].expert.config.prefix_max
        if (params.chunk_execution != "rtc" or previous is None or previous.policy_type != params.policy_type
                or rtc_reason("rtc", params.policy_type, sampler, prefix_max)):
            return None
        rows = previous.chunk[max(0, round((stamp - previous.stamp) / self.dt)):]
        if not len(rows):
            return None
        measured = sum(self.ages) / len(self.ages) if self.ages else 0.0
        delay = params.rtc_delay_steps or math.ceil(measured / self.dt - 1e-9)
        if prefix_max and delay > prefix_max:  # measured beyond what the expert was trained with: the rows it
            self.stats["rtc_delay_capped"] += 1  # takes are given, the chunk still starts where it arrives
            delay = prefix_max
        return Inpaint(rows.astype(np.float32), min(delay, len(rows)))

    def _interval(self, params) -> float:
        if params.rate_hz > 0:
            return 1.0 / params.rate_hz
        mean = (sum(self.latencies) / len(self.latencies)) if len(self.latencies) >= 5 else 0.0
        return max(1.15 * mean, params.min_interval_s)

    def _inference_loop(self) -> None:
        self._share_cpu()
        next_time = time.monotonic()
        while not self._stop.is_set():
            self._stop.wait(max(0.0, next_time - time.monotonic()))
            next_time = time.monotonic() + self._interval(self.snapshot()[0])
            try:
                self.infer_once()
            except Exception as exc:  # noqa: BLE001 - the node keeps serving; status reports it
                self.stats["inference_errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.logger.error(f"inference failed: {self.last_error}", throttle_duration_sec=5.0)
                self.on_fault(f"model failed: {self.last_error}")

    def infer_once(self) -> bool:
        """One inference on the latest observation if it is new; True when a chunk was handed on."""
        params, _ = self.snapshot()
        with self._lock:
            generation = self._generation
        stale = self.inputs.watchdog.stale(self.inputs.now(), only=self.inputs.policy_inputs)
        if stale:  # never act on old data
            self.stats["stale_skips"] += 1
            return False
        features = None
        sensor = self.inputs.sensor
        sensor_newest = sensor.newest_stamp() if sensor is not None else None
        if params.async_inference and self.inputs.spec.views:
            assembled = self.assemble_async_observation()
            if assembled is not None:
                stamp, obs, features = assembled
                assembled = (stamp, obs)
        else:
            assembled = self.assemble_observation()
        with self._lock:
            if assembled is None or assembled[0] == self._last_stamp:
                return False
        stamp, obs = assembled
        policy = self.policies[params.policy_type]
        options = policy.expert.options_for(sampler=params.sampler, steps=params.ddim_steps)  # the ones it takes
        sampling = policy.expert.sampling(**options)
        inpaint = self.rtc_inpaint(params, stamp, sampling.sampler)
        start = time.perf_counter()
        chunk = policy.predict_action_chunk(obs, seed=params.seed if params.seed >= 0 else None, vl_features=features,
                                            inpaint=inpaint, **options)
        latency = (time.perf_counter() - start) * 1e3
        self.latencies.append(latency / 1e3)
        with self._lock:
            if generation == self._generation:
                self._last_stamp = stamp
        self.stats["inferences"] += 1
        chunk = chunk[0].cpu().numpy()  # (H, A)
        if not np.isfinite(chunk).all():
            self.stats["non_finite_chunks"] += 1
            self.last_error = "the model produced non-finite actions; nothing was published"
            self.on_fault(self.last_error)
            return False
        if self.snapshot()[0].policy_type != params.policy_type:  # switched during inference: discard
            self.stats["discarded_after_switch"] += 1
            return False
        with self._delivery:
            with self._lock:
                reset_meanwhile = generation != self._generation
            if reset_meanwhile:  # the clock jumped back (or a switch) while this chunk was computed
                self.stats["discarded_after_reset"] += 1
                return False
            self.event_times["chunk"].append(time.monotonic())
            result = ChunkResult(stamp, chunk, params.policy_type, params, latency, sensor_newest, sampling)
            self.previous = result
            self.ages.append(max(0.0, self.inputs.now() - stamp))
            self.on_chunk(result)
        return True
