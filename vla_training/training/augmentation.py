"""Image augmentation for training only: random shift, random crop and colour jitter per camera view.

The standard for image policies trained from demonstrations (DrQ's random shift, Diffusion Policy's
random crop): a few hundred demonstrations show each placement from one viewpoint, and a policy that
keys on exact pixel positions overfits. Augmentation runs where samples are collated (the loader
workers), on the uint8 frames, before the backbone's inputs are made; validation, evaluation and the
node never see it (the trainer hands it to the training loader only).

Configured per view in the train config (`*` = every view not named):

    train:
      augment:
        "*": {shift: 4}                                   # pixels, each side (pad by edge, crop back)
        wrist: {shift: 8, crop: 0.85, brightness: 0.2, contrast: 0.2}
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from vla_models import ConfigError
from vla_models.constants import OBS_IMAGES


@dataclass(frozen=True)
class ViewAugmentation:
    shift: int = 0  # pixels: pad each side by replicating the edge, then crop a random H x W window
    crop: float = 1.0  # smallest kept fraction of the area: a random window of that size, resized back
    brightness: float = 0.0  # pixel values x U(1 - b, 1 + b)
    contrast: float = 0.0  # distance from the image's mean x U(1 - c, 1 + c)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8, a new array."""
        h, w = image.shape[:2]
        out = image
        if self.crop < 1.0:
            side = np.sqrt(rng.uniform(self.crop, 1.0))
            ch, cw = max(1, round(h * side)), max(1, round(w * side))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            out = cv2.resize(np.ascontiguousarray(out[y:y + ch, x:x + cw]), (w, h), interpolation=cv2.INTER_LINEAR)
        if self.shift:
            s = self.shift
            padded = np.pad(out, ((s, s), (s, s), (0, 0)), mode="edge")
            y, x = rng.integers(0, 2 * s + 1, size=2)
            out = padded[y:y + h, x:x + w]
        if self.brightness or self.contrast:
            pixels = out.astype(np.float32)
            if self.contrast:
                mean = pixels.mean()
                pixels = (pixels - mean) * rng.uniform(1 - self.contrast, 1 + self.contrast) + mean
            if self.brightness:
                pixels = pixels * rng.uniform(1 - self.brightness, 1 + self.brightness)
            out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.array(out, dtype=np.uint8, copy=out is image)


def parse_augment(spec: dict, views: list[str]) -> dict[str, ViewAugmentation]:
    """The train config's `augment` -> {view: ViewAugmentation} for the policy's views (named errors)."""
    if not spec:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(f"augment: expected a mapping of view name (or '*') to options, got {spec!r}")
    if not views:
        raise ConfigError("augment: the policy has no camera views (views: []); remove train.augment")
    unknown = sorted(set(spec) - set(views) - {"*"})
    if unknown:
        raise ConfigError(f"augment: unknown view(s) {unknown}; expected some of {views} or '*'")
    options = {f: t for f, t in ViewAugmentation.__annotations__.items()}
    out = {}
    for view in views:
        values = spec.get(view, spec.get("*"))
        if values is None:
            continue
        if not isinstance(values, dict) or set(values) - set(options):
            raise ConfigError(f"augment.{view}: expected a mapping with some of {sorted(options)}, got {values!r}")
        aug = ViewAugmentation(**values)
        if not isinstance(aug.shift, int) or aug.shift < 0:
            raise ConfigError(f"augment.{view}.shift: expected pixels as an int >= 0, got {aug.shift!r}")
        if not 0 < aug.crop <= 1:
            raise ConfigError(f"augment.{view}.crop: expected a fraction of the area in (0, 1], got {aug.crop!r}")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(aug, name) < 1:
                raise ConfigError(f"augment.{view}.{name}: expected a factor in [0, 1), got {getattr(aug, name)!r}")
        out[view] = aug
    return out


class AugmentedCollate:
    """`collate(samples)` after augmenting each sample's frames. The random numbers come from torch's RNG of the
    process that collates (a loader worker: seeded per worker by the DataLoader; in process: the rank's own)."""

    def __init__(self, collate, augmentations: dict[str, ViewAugmentation]) -> None:
        self.collate, self.augmentations = collate, augmentations

    def __call__(self, samples: list[dict]) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        for sample in samples:
            images = sample.get(OBS_IMAGES, {})
            sample[OBS_IMAGES] = {view: self.augmentations[view](frame, rng) if view in self.augmentations else frame
                                  for view, frame in images.items()}
        return self.collate(samples)
