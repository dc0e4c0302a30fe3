"""`vla train`: one training loop for every expert, on 1 process, N GPUs (torchrun/DDP) or CPU (gloo).

AdamW (weight decay 0.01) with parameter groups (expert/fusion at lr, sensor encoder at 5 x lr,
backbone/LoRA at 0.1 x lr, as the seed), warmup 3 % -> hold 2 % -> cosine to min_lr, gradient
accumulation and clipping, bf16 autocast on GPU, EMA weights with warmup for the diffusion expert
(used for validation and for best/), atomic checkpoints every N steps into `last/` with the trainer state so
that `--resume` continues schedule, optimiser and data order; `best/` by validation loss.
Stage 1 trains with a frozen backbone from the feature cache; stage 2 adds LoRA adapters.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from vla_models import ConfigError, PolicyConfig, build_policy
from vla_models.checkpoint_files import check_state, read_manifest, read_weights
from vla_models.constants import OBS_SENSOR_MASK, SAMPLE_WEIGHT, VL_FEATURES

from ..data.episodes import list_episodes
from ..data.samples import (BackboneCollate, ChunkDataset, check_episode, collate, control_period, fit_statistics,
                            split_episodes)
from ..files import write_json_atomic
from .augmentation import AugmentedCollate, parse_augment
from .config import TrainConfig, load_train_config
from .distributed import (find_unused_parameters, gather_rng_states, mean_across_ranks, rank_seed, rng_devices,
                          setup_process)
from .ema import TrainableEMA
from .feature_cache import FeatureCache, shared_fingerprint
from .loader import EpochLoader
from .monitoring import ThroughputWindow, apply_memory_cap, make_loggers
from .train_state import load_train_state, save_train_state


def lr_lambda(total: int, warmup_frac: float, hold_frac: float, min_ratio: float):
    """Multiplier of the base lr: linear warmup -> hold -> cosine decay to min_ratio."""
    warmup, hold = max(1, int(warmup_frac * total)), int(hold_frac * total)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < warmup + hold:
            return 1.0
        progress = min(1.0, (step - warmup - hold) / max(1, total - warmup - hold))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def load_init_weights(policy, path: str | Path) -> list[str]:
    """A checkpoint's weights (model.safetensors, hash-checked) into `policy` in place; returns the tensors
    it skipped, each as "key: checkpoint (shape) vs model (shape)" or "key: not in this model". The
    normaliser's statistics are not taken: training fits them to its own data. A layer that LoRA wraps in
    this model (stage 2 from stage 1) takes the checkpoint's weights as its base layer's."""
    path = Path(path)
    _, tensors = read_weights(path, read_manifest(path))
    own = policy.state_dict()
    fits, skipped = {}, []
    for key, value in tensors.items():
        if key.startswith("normalizer."):
            continue
        module, _, name = key.rpartition(".")
        if key not in own and f"{module}.base_layer.{name}" in own:
            key = f"{module}.base_layer.{name}"
        if key not in own:
            skipped.append(f"{key}: not in this model")
        elif own[key].shape != value.shape:
            skipped.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            fits[key] = value
    policy.load_state_dict(fits, strict=False)
    return skipped


def param_groups(policy, lr: float, weight_decay: float, backbone_scale: float = 0.1) -> list[dict]:
    """AdamW groups: expert/fusion at lr, sensor encoder at 5 x lr, backbone (LoRA) at backbone_scale x lr;
    weight decay only on weight matrices (not on norms, biases, embeddings, or learned query/token tables)."""
    embeddings = {f"{m}.weight" for m, module in policy.named_modules() if isinstance(module, torch.nn.Embedding)}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        key = "backbone" if name.startswith("backbone.") else "sensor" if name.startswith("sensor_encoder.") else "expert"
        decay = p.ndim >= 2 and name not in embeddings and "embed" not in name.split(".")[-1] and \
            "queries" not in name and "token" not in name.split(".")[-1]
        groups.setdefault((key, decay), []).append(p)
    scale = {"expert": 1.0, "sensor": 5.0, "backbone": backbone_scale}
    return [{"params": ps, "lr": lr * scale[k], "weight_decay": weight_decay if decay else 0.0,
             "name": f"{k}{'' if decay else '/no_decay'}"} for (k, decay), ps in groups.items() if ps]


class Trainer:
    def __init__(self, train: TrainConfig, policy_config: PolicyConfig) -> None:
        self.train_cfg = train
        # on CUDA: this rank's GPU made current before the process group or anything else touches CUDA
        self.distributed, self.rank, self.world, self.device = setup_process(train.device)
        self.out = Path(train.out)
        apply_memory_cap(self.device, train.memory_cap_gb)  # before any allocation on the GPU
        torch.manual_seed(train.seed)  # the model's initial weights: the same on every rank (DDP broadcasts rank 0's)
        episodes = list_episodes(train.dataset)
        for ep in episodes:  # every episode against the config before any model loads (a 3B backbone takes minutes)
            check_episode(ep, policy_config)
        period = control_period(episodes)
        if period and abs(period - policy_config.dt) > 0.01 * period:  # the checkpoint carries the data's period
            if self.rank == 0:
                print(f"dt: the recordings have one action every {period:.4f} s; the checkpoint's dt is set to it "
                      f"(config said {policy_config.dt})", flush=True)
            policy_config = policy_config.replace(dt=period)
        self.train_eps, self.val_eps = split_episodes(episodes, train.val_fraction, train.seed)
        self.policy = build_policy(policy_config)
        if train.init:
            self._init_from(train.init)
        fit_statistics(self.policy, self.train_eps, seed=train.seed)  # a bounded, seeded sample: equal on every rank
        self.policy.to(self.device)
        # from here on every rank draws its own random numbers (diffusion/flow noise and times, dropout):
        # with one seed, N ranks would train on N copies of the same noise
        torch.manual_seed(rank_seed(train.seed, self.rank))
        refs = bool(train.feature_cache)  # from the cache: frames by reference, decoded only on a miss
        self.train_ds = ChunkDataset(self.train_eps, policy_config, train.sensor_window, frame_refs=refs)
        self.val_ds = ChunkDataset(self.val_eps, policy_config, train.sensor_window, frame_refs=refs) \
            if self.val_eps else None
        self.total_steps = train.max_steps or self.planned_steps(train.epochs)
        if self.micro_batches_per_epoch() < train.grad_accum and self.rank == 0:
            print(f"grad_accum {train.grad_accum}: each rank has {self.micro_batches_per_epoch()} micro-batch(es) of "
                  f"{train.batch_size} per epoch; an optimiser step accumulates across epoch ends", flush=True)
        self.optimizer = torch.optim.AdamW(param_groups(self.policy, train.lr, train.weight_decay, train.backbone_lr_scale))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, train.warmup_frac, train.hold_frac, train.min_lr / train.lr))
        # an EMA of the weights for the experts that sample from noise (diffusion, flow), as Diffusion Policy
        self.ema = TrainableEMA(self.policy, train.ema_decay) if self.policy.expert.sampling().stochastic else None
        self.cache = FeatureCache(train.feature_cache, self.policy, int(train.feature_cache_gb * 2**30),
                                  shared_fingerprint(self.policy, self.distributed, self.rank),
                                  len(self.train_ds) + len(self.val_ds or [])) if train.feature_cache else None
        # the backbone's inputs are made while collating (in the loader workers) unless cached features replace them
        self.collate = BackboneCollate(self.policy.backbone, policy_config.views, train.pixels) \
            if self.policy.backbone is not None and self.cache is None else collate
        # augmented frames in the training batches only (validation collates with self.collate)
        augment = parse_augment(train.augment, policy_config.views)
        self.train_collate = AugmentedCollate(self.collate, augment) if augment else self.collate
        if train.loader_workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers fork after the tokenizer ran
        self.progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": None, "samples": 0}
        if train.resume:
            self._resume()
        # no graph walk per step unless some trainable parameter can be left out of the forward
        self.model = (torch.nn.parallel.DistributedDataParallel(self.policy, find_unused_parameters=find_unused_parameters(
            self.policy, train.find_unused_parameters, self.cache is not None)) if self.distributed else self.policy)
        self.loggers = self._loggers() if self.rank == 0 else []

    def _init_from(self, path: str) -> None:
        """--init: the checkpoint's model.safetensors into this model (no second policy is built). Tensors
        that do not fit (another horizon or action width, a module this model lacks) are an error naming
        them, unless init_partial (--init-partial) lets them be skipped with a warning."""
        skipped = load_init_weights(self.policy, path)
        if skipped and not self.train_cfg.init_partial:
            raise ConfigError(f"--init {path}: {len(skipped)} tensor(s) of the checkpoint do not fit this model: "
                              f"{'; '.join(skipped)}; expected the same shapes (same horizon, action_dim, state.dim, "
                              "sizes); pass --init-partial (train field init_partial: true) to start those from "
                              "random weights")
        if skipped and self.rank == 0:
            print(f"warning: --init {path} --init-partial: {len(skipped)} tensor(s) skipped (random weights "
                  f"instead): {'; '.join(skipped)}", flush=True)

    def _resume(self) -> None:
        last = self.out / "last"
        if not last.is_dir():
            raise ConfigError(f"--resume: {last} does not exist; start without --resume or point --out at the run")
        # the weights into this model (no second policy, 3B backbone included, on every rank's CPU)
        weights, tensors = read_weights(last, read_manifest(last))
        check_state(self.policy, tensors, weights)
        self.policy.load_state_dict(tensors, strict=False)  # a pretrained frozen base is not in the file: as built
        self.progress = load_train_state(last, self.optimizer, self.scheduler, self.ema, self.rank, self.device)

    # -- logging ------------------------------------------------------------------------------------
    def _loggers(self) -> list:
        self.out.mkdir(parents=True, exist_ok=True)
        project = "QwenVLA-Diffusion-Sensor" if self.ema is not None else "QwenVLA-Sensor"  # the seed's names
        return make_loggers(self.train_cfg, self.out, project)

    def log(self, metrics: dict) -> None:
        if self.rank != 0:
            return
        step = self.progress["step"]
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        for logger in self.loggers:
            logger(metrics, step)

    # -- the loop -----------------------------------------------------------------------------------
    def _batch(self, ds: ChunkDataset, indices) -> dict:
        return self._complete(self.collate([ds[int(i)] for i in indices]))

    def _complete(self, batch: dict) -> dict:
        """What the training process adds to a collated batch: sample weights, cached features."""
        if self.train_cfg.sensor_weight != 1.0 and OBS_SENSOR_MASK in batch:
            batch[SAMPLE_WEIGHT] = 1.0 + (self.train_cfg.sensor_weight - 1.0) * batch[OBS_SENSOR_MASK].float()
        if self.cache is not None:
            batch[VL_FEATURES] = self.cache.features(batch)
        return batch

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        """This rank's micro-batches of an epoch, DistributedSampler-style: one seeded permutation per epoch,
        padded by wrapping to a multiple of the world size so every rank gets the same number of samples
        (ranks that disagree on it fall out of step in their all-reduces and hang), then cut into whole
        optimiser steps of grad_accum micro-batches (the left-over ones are not trained this epoch). An
        epoch with fewer micro-batches than grad_accum keeps them all: the step they start is completed
        by the next epoch's (the accumulation is carried across the epoch end)."""
        generator = torch.Generator().manual_seed(self.train_cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_ds), generator=generator).numpy()
        if len(order) % self.world:
            order = np.concatenate([order, order[:self.world - len(order) % self.world]])
        order = order[self.rank::self.world]
        bs = self.train_cfg.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order) - bs + 1 if len(order) >= bs else 1, bs)]
        return batches[:len(batches) // self.train_cfg.grad_accum * self.train_cfg.grad_accum] or batches

    def micro_batches_per_epoch(self) -> int:
        """The length of every rank's `_epoch_order`."""
        cfg = self.train_cfg
        micro = max(1, math.ceil(len(self.train_ds) / self.world) // cfg.batch_size)
        return micro // cfg.grad_accum * cfg.grad_accum or micro

    def steps_per_epoch(self) -> int:
        """Whole optimiser steps per epoch (at least 1). These methods call each other through the class so
        that a stand-in holding train_cfg, train_ds, world and rank can use them (the tests do)."""
        return max(1, Trainer.micro_batches_per_epoch(self) // self.train_cfg.grad_accum)

    def planned_steps(self, epochs: int) -> int:
        """Optimiser steps in `epochs` epochs: with fewer micro-batches per epoch than grad_accum, a step takes
        more than one epoch (rounded up: every epoch's micro-batches are trained)."""
        return max(1, math.ceil(epochs * Trainer.micro_batches_per_epoch(self) / self.train_cfg.grad_accum))

    def run(self) -> dict:
        cfg, p = self.train_cfg, self.progress
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(
                {"train": asdict(cfg), "policy": self.policy.config.to_dict(), "world_size": self.world,
                 "train_episodes": [e.name for e in self.train_eps], "val_episodes": [e.name for e in self.val_eps],
                 "total_steps": self.total_steps}, indent=2))
        bar = tqdm(total=self.total_steps, initial=p["step"], desc=f"train {self.policy.config.expert.type}",
                   disable=self.rank != 0 or not cfg.progress, unit="step")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else torch.autocast(
            "cpu", enabled=False)
        self.model.train()
        start, meter = time.perf_counter(), ThroughputWindow()
        micro_losses: list[float] = []
        pending, step_samples = 0, 0  # micro-batches accumulated since the last optimiser step (0 at every checkpoint)
        data_s = 0.0  # waited for this step's batches
        # samples are read (frames decoded) in `loader_workers` persistent processes, in each epoch's order
        epochs = EpochLoader(self.train_ds, self.train_collate, cfg.loader_workers, cfg.seed, self.device.type == "cuda")
        while p["step"] < self.total_steps:
            batches = self._epoch_order(p["epoch"])
            first = p["batch_in_epoch"]
            loader = epochs.epoch(batches[first:])
            for b in range(first, len(batches)):
                fetch = time.perf_counter()
                batch = self._complete(next(loader))  # + sample weights, cached features (this process)
                data_s += time.perf_counter() - fetch
                pending += 1
                final = pending == cfg.grad_accum  # the micro-batch that completes an optimiser step
                # DDP all-reduces the gradients once per optimiser step, in its final micro-batch's backward
                with contextlib.nullcontext() if final or not self.distributed else self.model.no_sync():
                    with autocast:
                        loss, logs = self.model(batch)
                    (loss / cfg.grad_accum).backward()
                p["batch_in_epoch"] = b + 1
                p["samples"] += len(batches[b]) * self.world
                step_samples += len(batches[b]) * self.world
                micro_losses = (micro_losses if pending > 1 else []) + [logs["loss"]]
                if not final:
                    continue
                pending = 0
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.policy)
                p["step"] += 1
                bar.update(1)
                # every micro-batch of the step, not the last one, averaged over the ranks
                step_loss = mean_across_ranks(float(np.mean(micro_losses)), self.distributed, self.world, self.device)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                meter.step(step_samples, data_s)  # samples/s and data wait over the last 20 steps, + totals
                step_samples, data_s = 0, 0.0
                metrics = {"train/loss": step_loss, "train/lr": self.scheduler.get_last_lr()[0],
                           "train/grad_norm": float(grad_norm), **meter.rates()}
                if "timestep_mean" in logs:
                    metrics["train/timestep_dist"] = logs["timestep_mean"]
                if self.device.type == "cuda":
                    metrics["train/peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.cache is not None:
                    metrics.update({f"cache/{k}": v for k, v in self.cache.counts().items()})
                self.log(metrics)
                if cfg.save_checkpoints and (p["step"] % cfg.checkpoint_every == 0 or p["step"] >= self.total_steps):
                    self.checkpoint()
                if p["step"] in cfg.snapshots:
                    self.snapshot(time.perf_counter() - start)
                if p["step"] >= self.total_steps:
                    break
            else:
                p["epoch"] += 1
                p["batch_in_epoch"] = 0
        bar.close()
        epochs.close()
        if self.distributed:
            self._check_ranks_agree()
            dist.barrier()
        return dict(p)

    def _check_ranks_agree(self) -> None:
        """Every rank must end with the same weights (DDP keeps them so unless the ranks fell out of step):
        a digest per rank is gathered, written to RUN/ranks.json, and a difference is an error."""
        digest = hashlib.sha256()
        for _, param in sorted(self.policy.named_parameters()):
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digests: list = [None] * self.world
        dist.all_gather_object(digests, digest.hexdigest())
        if self.rank == 0:
            (self.out / "ranks.json").write_text(json.dumps({"weights_sha256": digests}, indent=2))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {self.world} ranks ended with different weights: {digests}")

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_ds is None or len(self.val_ds) == 0:
            return None
        losses = []
        with self._evaluated() as model, torch.random.fork_rng(devices=rng_devices(self.device)):
            model.eval()
            torch.manual_seed(1234)  # the same diffusion noise every validation
            idx = np.arange(len(self.val_ds))[:: max(1, len(self.val_ds) // 512)]
            for i in range(0, len(idx), self.train_cfg.batch_size):
                loss, _ = model(self._batch(self.val_ds, idx[i:i + self.train_cfg.batch_size]))
                losses.append(loss.item())
        self.policy.train()
        return float(np.mean(losses))

    def _evaluated(self):
        """The policy as validated and saved to best/: with the EMA's values for diffusion."""
        return self.ema.applied(self.policy) if self.ema is not None else contextlib.nullcontext(self.policy)

    def snapshot(self, seconds: float) -> None:
        """OUT/step_N: the weights as validated, and snapshot.json with the step and the training wall time."""
        if self.rank == 0:
            step = self.progress["step"]
            with self._evaluated() as evaluated:
                evaluated.save(self.out / f"step_{step}")
            write_json_atomic(self.out / f"step_{step}" / "snapshot.json",
                              {"step": step, "train_seconds": seconds, "samples": self.progress["samples"]})

    def checkpoint(self) -> None:
        """last/ = raw weights + trainer state (EMA included); best/ = the weights validated (EMA for diffusion)."""
        val = self.validate()
        # every rank's CPU (and CUDA) RNG state: a collective, every rank, before rank 0 writes
        rng_states, cuda_states = gather_rng_states(self.distributed, self.world, self.device)
        if self.rank == 0:
            p = self.progress
            if val is not None:
                self.log({"val/loss": val})
            if val is None or p["best_val"] is None or val < p["best_val"]:
                p["best_val"] = val
                with self._evaluated() as evaluated:
                    evaluated.save(self.out / "best")
            self.policy.save(self.out / "last", extra=lambda d: save_train_state(
                d, self.optimizer, self.scheduler, dict(p), self.ema, rng_states, cuda_states))
            if self.ema is not None:
                with self.ema.applied(self.policy) as averaged:
                    averaged.save(self.out / "last_ema")
        if self.distributed:
            dist.barrier()


def train(overrides: dict) -> dict:
    train_cfg, policy_cfg = load_train_config(overrides)
    trainer = Trainer(train_cfg, policy_cfg)
    try:
        return trainer.run()
    finally:
        if trainer.distributed and dist.is_initialized():
            # gloo's worker thread frees each finished collective's tensors (it takes the GIL for that) after the
            # collective has returned here; tearing the group down meanwhile, GIL held, deadlocks (seen: the DDP
            # reducer's destructor waiting on the group while the worker waits for the GIL). So: let the worker
            # finish with the GIL free, drop DDP while the group lives, then destroy the group.
            time.sleep(0.5)
            trainer.model = None
            gc.collect()
            dist.destroy_process_group()
