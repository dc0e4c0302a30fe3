"""`vla eval`: closed-loop success in simulation, offline path error, per-stage latency, diversity.

All figures are measured, never assumed: closed loop runs the policy in Meta-World on placements of
another MT1 seed than the training data (held out), executing the first `execute` actions of each
chunk (receding horizon); offline metrics compare integrated predicted chunks with the recorded
future; latency times the policy's own stages at batch 1; diversity draws K samples per observation.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_models import ConfigError, load_policy
from vla_models.constants import OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR, OBS_SENSOR_MASK, OBS_STATE

from ..data.episodes import list_episodes
from ..data.samples import ChunkDataset, collate
from ..data.sim import task_instruction
from .chunk_execution import DelayedChunks

# Meta-World moves the mocap by action x 1/100 m per step: 1 action unit = 10 mm of hand motion.
SIM_MM_PER_UNIT = 10.0


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (uses best/) or a checkpoint directory."""
    path = Path(path)
    return path / "best" if (path / "best" / "config.json").exists() else path


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(values) -> dict:
    values = np.asarray(list(values), float)
    if values.size == 0:  # nothing to summarise (e.g. no successful episode): no number, not a NaN
        return {"mean": None, "median": None, "p95": None, "n": 0}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
            "n": int(values.size)}


def sampling_options(policy, sampler: str | None = None, steps: int | None = None) -> dict:
    """`--sampler` / `--steps` as the options the policy's expert takes (others dropped), checked by the
    expert now: a value it does not accept stops the run before any episode."""
    try:
        return policy.expert.options_for(sampler=sampler, steps=steps)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--sampler/--steps for the {policy.config.expert.type} expert: {exc}") from exc


# -- closed loop -------------------------------------------------------------------------------------
def chunk_seed(sample_seed: int, episode: int, chunk: int) -> int:
    """The noise seed of one chunk of a closed loop: independent draws per (sampling seed, episode, chunk).
    (A counter from the sampling seed, as before 2026-12-07, gave seed 1 the draws of seed 0 shifted by one
    chunk: once the two runs' chunk counts differed by one they drew the same noise and ran the same episodes,
    49 of 50 in one demo run, so "two seeds pooled" was one draw.)"""
    return int(np.random.SeedSequence([sample_seed, episode, chunk]).generate_state(1)[0])


def closed_loop(policy, task: str, episodes: int, seed: int, execute: int = 8, max_steps: int = 300,
                sampler: str | None = None, steps: int | None = None, sample_seed: int = 0,
                save_rollouts: int = 0, out_dir: str | Path | None = None, sensor_window: int | None = None,
                progress: bool = True, episode_log: str | Path | None = None, image_size: int = 96,
                chunk_execution: str = "switch", delay: int = 0, targets: str = "delta") -> dict:
    """Success rate (+ 95 % Wilson interval) and episode lengths on `episodes` placements of MT1 seed `seed`.

    episode_log: a file that gets one JSON line per finished episode (progress of a separate process).
    image_size: the cameras' resolution (square), as the training demonstrations were rendered.
    chunk_execution, delay: switch | ensemble | rtc, with each chunk arriving `delay` control steps after its
    observation while the simulator runs on (chunk_execution.py); switch with delay 0 = the receding horizon.
    targets: `delta` (each row moves the hand's setpoint by itself) or `absolute`: a chunk's xyz rows become
    targets = the setpoint at its observation + the accumulated deltas, and each step moves the setpoint to
    its row's target (what the ROS node's pose_target interface and a cartesian controller do).
    """
    from ..data.sim import SimEnv

    cfg = policy.config
    columns = sim_state_columns(cfg)
    recorded = tuple(dict.fromkeys([*cfg.views, "corner"]))  # views of an episode saved as a rollout
    env = SimEnv(task, seed=seed, views=recorded if save_rollouts else tuple(cfg.views), image_size=image_size,
                 render=bool(cfg.views) or save_rollouts > 0)
    overrides = sampling_options(policy, sampler, steps)
    spec = policy.expert.sampling(**overrides)
    rtc_capable = spec.stochastic or policy.expert.takes_prefix  # guided sampling, or trained with given rows
    DelayedChunks(chunk_execution, delay, execute, cfg.horizon, rtc_capable)  # a bad setting stops here
    if targets not in ("delta", "absolute") or (targets == "absolute" and chunk_execution == "rtc"):
        raise ConfigError(f"targets: expected delta, or absolute with switch or ensemble (rtc guides the policy's own "
                          f"delta actions), got {targets!r} with {chunk_execution}")
    instruction = task_instruction(task)
    results, saved = [], []
    if episode_log is not None:  # a bad path fails here, not after the first episode
        Path(episode_log).parent.mkdir(parents=True, exist_ok=True)
    try:
        for ep in tqdm(range(episodes), desc=f"closed loop {cfg.expert.type}", disable=not progress, unit="ep"):
            env.views = recorded if ep < save_rollouts else tuple(cfg.views)  # render only what is used
            record = env.reset(ep)
            sensor_hist = [record.sensor]
            frames = [_rollout_frame(record, recorded)] if ep < save_rollouts else None
            success, steps, chunks = False, 0, 0
            runner = DelayedChunks(chunk_execution, delay, execute, cfg.horizon, rtc_capable)
            while steps < max_steps and not success:
                if runner.due(steps):  # an inference starts from this step's observation
                    obs = _sim_observation(cfg, record, sensor_hist, sensor_window or cfg.sensor.window, instruction,
                                           columns)
                    inpaint = runner.inpaint(steps)
                    chunk = policy.predict_action_chunk(obs, seed=chunk_seed(sample_seed, ep, chunks), **overrides,
                                                        **({"inpaint": inpaint} if inpaint else {}))
                    chunk = chunk[0].cpu().numpy()
                    if targets == "absolute":
                        chunk = np.hstack([setpoint_targets(env, chunk[:, :3]), chunk[:, 3:]])
                    runner.submit(steps, chunk)
                    chunks += 1
                action = runner.action(steps)  # the sim runs on while the policy infers
                if action is not None and targets == "absolute":
                    action = np.r_[(action[:3] - env.setpoint) / env.action_scale, action[3:]].astype(np.float32)
                record = env.step(action if action is not None else env.hold_action())  # no chunk yet: hold
                sensor_hist.append(record.sensor)
                steps += 1
                if frames is not None:
                    frames.append(_rollout_frame(record, recorded))
                success = record.success
                if record.info.get("obstacle_contact"):  # touched the post: failed, whatever follows
                    break
            jumps = runner.boundary_jumps()
            results.append({"placement": ep, "success": bool(success), "length": steps, "chunks": chunks,
                            "final_hand": [float(v) for v in record.state[:3]],
                            "boundary_jerk": float(np.mean(jumps)) if jumps else None,
                            **({"obstacle_contact": bool(record.info["obstacle_contact"]),
                                "passed": record.info["passed"]} if "obstacle_contact" in record.info else {})})
            if episode_log is not None:
                with open(episode_log, "a") as fh:
                    fh.write(json.dumps(results[-1]) + "\n")
            if frames is not None and out_dir is not None:
                saved.append(_save_rollout(frames, Path(out_dir), f"{cfg.expert.type}_ep{ep}", success))
    finally:
        env.close()
    wins = sum(r["success"] for r in results)
    return {"task": task, "placement_seed": seed, "episodes": episodes, "successes": wins,
            "success_rate": wins / max(episodes, 1), "success_ci95": wilson_interval(wins, episodes),
            "length": summarise(r["length"] for r in results),
            "length_success": summarise(r["length"] for r in results if r["success"]),
            "execute": execute, "max_steps": max_steps, "sampler": overrides,
            "chunk_execution": chunk_execution, "delay": delay, "targets": targets,
            "boundary_jerk": summarise(r["boundary_jerk"] for r in results if r["boundary_jerk"] is not None),
            "sampling": policy.expert.sampling(**overrides).label, "sample_seed": sample_seed,
            **obstacle_summary(results), "per_episode": results, "rollouts": saved}


def setpoint_targets(env, deltas: np.ndarray) -> np.ndarray:
    """(H, 3) xyz deltas -> setpoint targets from the current setpoint, as the ROS node's pose_target interface
    builds them: each delta within the action bound (the node's max_delta), accumulated with the workspace (the
    setpoint's bounds) as a saturating bound."""
    low, high = env.setpoint_bounds
    point, out = env.setpoint, np.empty((len(deltas), 3))
    for k, delta in enumerate(np.clip(deltas, -1.0, 1.0) * env.action_scale):
        out[k] = point = np.clip(point + delta, low, high)
    return out


def obstacle_summary(results: list[dict]) -> dict:
    """The obstacle task's episodes: how many touched the post, and where each passed it."""
    if not results or "obstacle_contact" not in results[0]:
        return {}
    passed = {}
    for r in results:
        key = r["passed"] + (" (success)" if r["success"] else "")
        passed[key] = passed.get(key, 0) + 1
    return {"obstacle_contacts": sum(r["obstacle_contact"] for r in results), "passed": dict(sorted(passed.items()))}


def sim_state_columns(cfg) -> list[int] | slice:
    """The simulator's state entries the policy reads: `state.columns` by name (sim.STATE_NAMES), as
    from a recording; a name the simulator does not have is a ConfigError before any episode."""
    from ..data.sim import STATE_NAMES

    try:
        indices = cfg.state.column_indices(STATE_NAMES)
    except KeyError as exc:
        raise ConfigError(f"state.columns: {exc.args[0]} are not in the simulator's state; expected names from "
                          f"{STATE_NAMES}") from None
    if indices is None and cfg.state.dim not in (0, len(STATE_NAMES)):
        raise ConfigError(f"state.dim: the simulator's state has {len(STATE_NAMES)} entries and the policy reads "
                          f"{cfg.state.dim}; name them in state.columns")
    return slice(None) if indices is None else indices


def _sim_observation(cfg, record, sensor_hist: list[np.ndarray], window: int, instruction: str,
                     columns: list[int] | slice = slice(None)) -> dict:
    obs: dict = {}
    if cfg.state.dim:
        obs[OBS_STATE] = record.state[columns][None]
    if cfg.sensor.channels:
        stream = np.concatenate(sensor_hist[-window:])[-window:]
        padded = np.zeros((window, stream.shape[1]), np.float32)
        padded[-len(stream):] = stream
        obs[OBS_SENSOR], obs[OBS_SENSOR_MASK] = padded[None], np.array([True])
    if cfg.views:
        obs[OBS_IMAGES] = {v: record.images[v][None] for v in cfg.views}
        obs[OBS_INSTRUCTION] = [instruction]
    return obs


def _rollout_frame(record, views: tuple[str, ...]) -> np.ndarray:
    """The policy's views (and `corner`) of one step, one above the other."""
    return np.concatenate([record.images[v] for v in views], axis=0)


def _save_rollout(frames: list, out_dir: Path, name: str, success: bool) -> dict:
    """An animated GIF and a contact sheet PNG (8 frames, the recorded views stacked) of one rollout."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    gif = out_dir / f"{name}.gif"
    images = [Image.fromarray(f) for f in frames[::2]]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=50, loop=0)
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 8).astype(int)]
    sheet = out_dir / f"{name}_sheet.png"
    Image.fromarray(np.concatenate(picks, axis=1)).save(sheet)
    return {"gif": str(gif), "contact_sheet": str(sheet), "success": success}


# -- offline -----------------------------------------------------------------------------------------
def _batches(ds: ChunkDataset, indices: np.ndarray, size: int):
    for i in range(0, len(indices), size):
        yield collate([ds[int(j)] for j in indices[i:i + size]])


def offline_path_error(policy, dataset_dir: str | Path, max_samples: int = 512, mm_per_unit: float | None = None,
                       sensor_window: int | None = None, seed: int = 0, sampler: str | None = None,
                       steps: int | None = None) -> dict:
    """L2 distance (mm) between the predicted chunk's integrated trajectory and the recorded future one.

    Trajectories are integrated from the current pose (cumulative sums of the translational action
    dims) over the valid (unpadded) steps. mm_per_unit: dataset units -> mm (1 for the seed's mm
    deltas, 10 for Meta-World's mocap deltas; read from meta.json `mm_per_action_unit` if present).
    """
    episodes = list_episodes(dataset_dir)
    ds = ChunkDataset(episodes, policy.config, sensor_window)
    scale = mm_per_unit or float(episodes[0].meta.get("mm_per_action_unit", 1.0))
    idx = np.linspace(0, len(ds) - 1, min(max_samples, len(ds))).astype(int)
    dims = min(3, policy.config.action_dim)
    errors, per_dim, per_step = [], [], [[] for _ in range(policy.config.horizon)]
    overrides = sampling_options(policy, sampler, steps)
    for batch in _batches(ds, idx, 64):
        pred = policy.predict_action_chunk(batch, seed=seed, **overrides).cpu().numpy()[..., :dims] * scale
        true = batch["action"].numpy()[..., :dims] * scale
        valid = ~batch["action_is_pad"].numpy()
        pred_path, true_path = np.cumsum(pred, axis=1), np.cumsum(true, axis=1)
        diff = pred_path - true_path  # (B, H, 3)
        dist = np.linalg.norm(diff, axis=-1)  # (B, H)
        for b in range(len(dist)):
            errors.extend(dist[b][valid[b]].tolist())
            per_dim.extend(np.abs(diff[b][valid[b]]).tolist())
            for h in np.nonzero(valid[b])[0]:
                per_step[h].append(dist[b, h])
    per_dim = np.asarray(per_dim)
    names = policy.config.action_names[:dims]
    return {"dataset": str(dataset_dir), "samples": int(len(idx)), "mm_per_unit": scale, "overall_mm": summarise(errors),
            "per_dim_mm": {n: summarise(per_dim[:, i]) for i, n in enumerate(names)},
            "per_step_mean_mm": [float(np.mean(s)) if s else None for s in per_step],
            "errors_mm": [float(e) for e in errors[:: max(1, len(errors) // 2000)]]}


# -- latency -----------------------------------------------------------------------------------------
def stage_latency(policies: dict, dataset_dir: str | Path, repeats: int = 30, sensor_window: int | None = None) -> dict:
    """Per-stage latency (median, p95 ms) at batch 1 of every sampling each policy's expert names
    (`latency_variants`: regression; DDIM-5/10/20, DDPM; flow K=5/10/20), same process and inputs.
    Keyed by the sampling's label."""
    out = {}
    sample_obs = None
    variants = [(policy, spec) for policy in policies.values() for spec in policy.expert.latency_variants()]
    for policy, spec in variants:
        label, overrides = spec.label, policy.expert.options_for(sampler=spec.sampler, steps=spec.steps)
        if sample_obs is None:
            ds = ChunkDataset(list_episodes(dataset_dir), policy.config, sensor_window)
            sample_obs = collate([ds[len(ds) // 2]])
        for _ in range(3):  # warm-up
            policy.predict_action_chunk(sample_obs, seed=0, **overrides)
        runs = []
        for r in range(repeats):
            policy.predict_action_chunk(sample_obs, seed=r, **overrides)
            runs.append(dict(policy.last_timings))
        out[label] = {stage: {"median": statistics.median(t[stage] for t in runs),
                              "p95": float(np.percentile([t[stage] for t in runs], 95))} for stage in runs[0]}
    return out


# -- diversity / modes -------------------------------------------------------------------------------
def _mode_reference(state: np.ndarray, mode: int, horizon: int, offset: float = 0.12) -> np.ndarray:
    """Hand path (H, 2) in mm the via-point expert would command from `state` in `mode` (sim.ViaPointExpert)."""
    hand, goal = state[:3].astype(float), state[36:39]
    via = np.array([(hand[0] + 0.05) / 2, np.clip(goal[1] + mode * offset, 0.43, 0.97), 0.22])
    p, path = hand.copy(), []
    for _ in range(horizon):
        p = p + np.clip((via - p) * 25.0, -1, 1) / 100.0
        path.append(p[:2] * 1000.0)
    return np.asarray(path) - hand[:2] * 1000.0


def diversity(policy, dataset_dir: str | Path, k: int = 16, max_obs: int = 40, sensor_window: int | None = None,
              seed: int = 0) -> dict:
    """K samples per observation: mean pairwise distance of the integrated chunks (mm); on a bimodal
    dataset (episodes with a `detour`), the fraction of samples in each mode and between the modes.

    Mode of a sample: its integrated xy hand path is compared with the two reference paths the
    via-point expert would command from the same state (one per mode): the path's point farthest from
    the hand, projected on the axis between the two references' end points, is `between` when within
    the middle half, otherwise the nearer mode. The farthest point rather than the end point, because a
    chunk that reaches the via-point early turns back towards the hole (on the demo's bimodal set the
    end point labelled 70 % of the recorded chunks with their true mode, the farthest point 85 %). The
    same classifier applied to the recorded chunks is reported as a check.
    """
    episodes = list_episodes(dataset_dir)
    ds = ChunkDataset(episodes, policy.config, sensor_window)
    cfg = policy.config
    starts = {}  # dataset index of each detour start
    offset = 0
    for e, ep in enumerate(episodes):
        detour = ep.meta.get("detour")
        if detour and detour.get("start_step") is not None:
            starts[offset + detour["start_step"]] = ep.meta.get("mode", 0)
        offset += ep.length
    bimodal = bool(starts)
    idx = np.array(sorted(starts))[:max_obs] if bimodal else np.linspace(0, len(ds) - 1, min(max_obs, len(ds))).astype(int)
    pairwise, counts, truth_ok = [], {"-1": 0, "+1": 0, "between": 0}, []
    for i in idx:
        batch = collate([ds[int(i)]])
        samples = policy.predict_action_chunk(batch, num_samples=k, seed=seed + int(i)) if k > 1 else \
            policy.predict_action_chunk(batch, seed=seed)[:, None]
        paths = np.cumsum(samples[0].cpu().numpy()[..., :2] * SIM_MM_PER_UNIT, axis=1)  # (K, H, 2) mm
        flat = paths.reshape(len(paths), -1)
        d = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
        pairwise.append(float(d[np.triu_indices(len(flat), 1)].mean()) if len(flat) > 1 else 0.0)
        if bimodal:
            state = batch[OBS_STATE][0].numpy()
            refs = {m: _mode_reference(state, m, cfg.horizon) for m in (-1, 1)}
            if np.linalg.norm(refs[1][-1] - refs[-1][-1]) < 10.0:  # the two modes barely differ here
                continue
            for path in paths:
                counts[_classify(path, refs)] += 1
            true_path = np.cumsum(batch["action"][0].numpy()[:, :2] * SIM_MM_PER_UNIT, axis=0)
            truth_ok.append(_classify(true_path, refs) == ("+1" if starts[int(i)] > 0 else "-1"))
    total = max(sum(counts.values()), 1)
    out = {"dataset": str(dataset_dir), "observations": int(len(idx)), "classified_observations": len(truth_ok), "samples_per_observation": k,
           "mean_pairwise_mm": float(np.mean(pairwise)) if pairwise else None, "bimodal": bimodal}
    if bimodal:
        out["mode_fractions"] = {m: c / total for m, c in counts.items()}
        out["classifier_accuracy_on_recorded"] = float(np.mean(truth_ok)) if truth_ok else None
    return out


def _classify(path: np.ndarray, refs: dict) -> str:
    """path (H, 2) mm relative to the hand -> "-1", "+1" or "between" (see `diversity`)."""
    a, b = refs[-1][-1], refs[1][-1]
    axis = b - a
    farthest = path[int(np.argmax(np.linalg.norm(path, axis=1)))]
    t = float((farthest - a) @ axis / max(axis @ axis, 1e-9))  # 0 at mode -1's end point, 1 at mode +1's
    if 0.25 < t < 0.75:
        return "between"
    return "+1" if t >= 0.75 else "-1"


def default_device(device: str | None = None) -> str:
    """`auto` (or None): CUDA when available, else the CPU."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_for_eval(path: str | Path, device: str | None = None, backbone: str | None = None):
    """A checkpoint (or run's best/) for evaluation; `backbone` replaces the recorded backbone weights' path."""
    return load_policy(resolve_checkpoint(path), device=default_device(device), backbone_pretrained=backbone)
