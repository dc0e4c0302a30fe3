"""Static-shape inference: the policy's `predict_action_chunk` for fixed cameras and prompt, made fast.

A robot's observations have the same layout at every frame (views, image sizes, instruction), so
everything that depends only on that layout is computed once (`QwenVLBackbone.static_layout`) and
each stage becomes a fixed sequence of kernels:

- images are resized, normalised and patchified with torch on the policy's device (no PIL);
- the backbone runs without host syncs (`forward_static`);
- on CUDA each stage is captured once in a CUDA graph (backbone; sensor/state encoders + fusion;
  expert incl. the whole denoising loop) and replayed, so a chunk costs a handful of launches.

Outputs equal `VLAPolicy.predict_action_chunk` up to float rounding (the image resampling differs
from PIL's in the last grey level). The initial diffusion noise is drawn outside the graphs from the
caller's seed; DDPM's per-step noise inside a graph comes from the CUDA generator (not the seed).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch

from .constants import OBS_IMAGES, OBS_INSTRUCTION
from .errors import ObservationError
from .fusion import Condition, Features
from .policy import VLAPolicy, _StageClock


class CudaGraph:
    """`fn(*inputs) -> tuple of tensors`, captured once for the inputs' shapes and replayed.

    Calling copies new inputs into the captured buffers and replays; the returned tensors are the
    graph's own output buffers (overwritten by the next call: clone what must outlive it).
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor], warmup: int = 2) -> None:
        self.inputs = [x.clone() for x in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream (allocator, cuBLAS workspaces)
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, x in zip(self.inputs, inputs):
            buffer.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs


class StaticRunner:
    """Fast inference for one policy: `predict_action_chunk` with the policy's signature and output.

    cuda_graphs: capture and replay each stage (CUDA only; ignored on CPU).
    compile_backbone: torch.compile each vision block and decoder layer of the backbone (fuses norms,
    rotary embeddings and activations; the layers stay compiled afterwards).
    compile_heads: torch.compile (inductor) the expert's network and the sensor/state encoders, so
    that each denoising step is a few fused kernels instead of ~150 small ones (the loop on a GPU
    is bound by kernel count, not arithmetic). Compiles on first use of each shape.
    expert_dtype: run the action expert in this dtype (e.g. torch.bfloat16 on a GPU, where a denoising
    step is bound by reading the expert's weights and launching kernels): the runner keeps its own
    copy of the expert's weights in it, taken now; the diffusion sample and the scheduler's arithmetic
    stay in float32.
    Layouts and graphs are cached per (instruction, image sizes, the expert's Sampling, samples).
    """

    def __init__(self, policy: VLAPolicy, cuda_graphs: bool = True, compile_heads: bool = False,
                 compile_backbone: bool = False, expert_dtype: torch.dtype | None = None) -> None:
        policy.normalizer.require_fitted()
        self.policy = policy.eval()
        self.cuda_graphs = cuda_graphs and policy.device.type == "cuda"
        self.expert = expert = policy.expert if expert_dtype in (None, torch.float32) \
            else copy.deepcopy(policy.expert).to(expert_dtype)
        self._step = torch.compile(expert.network_step(), dynamic=False) if compile_heads else expert.network_step()
        self._encode = torch.compile(policy.encode, dynamic=False) if compile_heads else policy.encode
        if compile_backbone and policy.backbone is not None:  # per layer: identical layers share one compile
            model = policy.backbone.model
            for layer in [*model.visual.blocks, *model.language_model.layers]:
                layer.compile(dynamic=False)
        self._layouts: dict[tuple, Any] = {}
        self._graphs: dict[tuple, CudaGraph | None] = {}
        self.capture_errors: dict[str, str] = {}  # stage -> why it runs eagerly (capture failed)
        self.last_timings: dict[str, float] = {}

    @property
    def config(self):
        return self.policy.config

    # -- stages -------------------------------------------------------------------------------------
    def _layout(self, observation: dict, batch: int) -> tuple[tuple, Any]:
        backbone, views = self.policy.backbone, self.policy.config.views
        images = observation.get(OBS_IMAGES)
        if not isinstance(images, dict):
            raise ObservationError(f"{OBS_IMAGES}: expected a dict {{view: (B, H, W, 3) uint8}} with views {views}")
        backbone.check_images(images, views, batch)
        instruction = observation.get(OBS_INSTRUCTION)
        instruction = [instruction] * batch if isinstance(instruction, str) else list(instruction or [""] * batch)
        key = (tuple(instruction), tuple(tuple(images[v].shape) for v in views))
        if key not in self._layouts:  # once per layout: the processor's tokens and grids, on the CPU
            self._layouts[key] = backbone.static_layout(backbone.preprocess(images, instruction, views))
        return key, self._layouts[key]

    def _staged(self, key: tuple, fn: Callable, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if not self.cuda_graphs:
            return fn(*inputs)
        if key not in self._graphs:
            try:
                self._graphs[key] = CudaGraph(fn, inputs)
            except Exception as exc:  # e.g. a host sync inside the stage: run it eagerly, say so
                torch.cuda.synchronize()
                self._graphs[key] = None
                self.capture_errors[str(key[0])] = f"{type(exc).__name__}: {exc}"[:300]
        graph = self._graphs[key]
        return fn(*inputs) if graph is None else graph(*inputs)

    @torch.no_grad()
    def predict_action_chunk(self, observation: dict[str, Any], num_samples: int = 1, seed: int | None = None,
                             **sampling_options: Any) -> torch.Tensor:
        policy, cfg = self.policy, self.policy.config
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = policy.prepare(observation, backbone_inputs=False)
        b, device = prepared.batch_size, policy.device
        vl: tuple[torch.Tensor, ...] = ()
        layout_key: tuple = ()
        if policy.backbone is not None:
            layout_key, layout = self._layout(observation, b)
            pixels = policy.backbone.pixels(observation[OBS_IMAGES], cfg.views, device)
        clock = _StageClock(device, timings)
        timings["preprocess_ms"] = (time.perf_counter() - start) * 1e3
        clock.last = time.perf_counter()
        if policy.backbone is not None:
            def backbone(px):
                f = policy.backbone.forward_static(px, layout)
                return f.tokens, f.mask, f.pooled

            vl = self._staged(("backbone", layout_key), backbone, [pixels])
            clock.lap("backbone_ms")
        sensor_inputs = [t for t in (prepared.sensor, prepared.sensor_mask, prepared.state) if t is not None]

        def condition(*tensors):
            vl_features = Features(*tensors[:3]) if vl else None
            rest = list(tensors[3:] if vl else tensors)
            prep = type(prepared)(b, None, *(rest.pop(0) if t is not None else None
                                             for t in (prepared.sensor, prepared.sensor_mask, prepared.state)))
            cond = self._encode(prep, vl_features=vl_features)
            return cond.tokens, cond.mask

        tokens, mask = self._staged(("condition", layout_key, *(tuple(t.shape) for t in sensor_inputs)), condition,
                                    [*vl, *sensor_inputs])
        clock.lap("sensor_ms")
        chunks = self._expert(Condition(tokens, mask), num_samples, seed, sampling_options, layout_key)
        chunks = policy.normalizer["action"].unnormalize(chunks.float()).clone()
        clock.lap("expert_ms")
        timings["total_ms"] = (time.perf_counter() - start) * 1e3
        self.last_timings = timings
        return chunks[:, 0] if num_samples == 1 else chunks

    def _expert(self, cond: Condition, num_samples: int, seed: int | None, options: dict,
                layout_key: tuple) -> torch.Tensor:
        expert = self.expert
        spec = expert.sampling(**options)  # the expert says what its options mean
        b, dtype = cond.tokens.shape[0], next(expert.parameters()).dtype  # tokens cast inside the captured stage
        noise: list[torch.Tensor] = []
        if spec.stochastic:  # all samples in one batched call, from a CPU generator's noise (same on any device)
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            noise = [expert.initial_noise(b * num_samples, generator, cond.tokens.float())]
            cond = cond.repeat_interleave(num_samples)  # float32 noise: the sampler's arithmetic in full precision
        loop_generator = None if self.cuda_graphs or not spec.stochastic else generator

        def run(t, m, *n):
            return (expert.sample_from(Condition(t.to(dtype), m), n[0] if n else None, spec, loop_generator,
                                       step=self._step),)

        (x,) = self._staged(("expert", layout_key, spec, tuple(cond.tokens.shape)), run, [cond.tokens, cond.mask, *noise])
        if not spec.stochastic:
            return x.unsqueeze(1).expand(-1, num_samples, -1, -1)
        return x.view(b, num_samples, expert.horizon, expert.action_dim)
