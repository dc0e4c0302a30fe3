"""Linear probes: how well a policy's image features say where the objects are.

The backbone's tokens of an observation (images + instruction, flattened: the prompt layout is fixed)
are mapped by ridge regression onto the positions the simulator knows (the peg's and the hole's, by
state column name). Fitted on frames of the training demonstrations, scored on held-out frames: an
error near the spread of the positions means the features do not carry them; a small one means the
policy could read them from its cameras. Run on a backbone with its initial random weights, the same
probe is the baseline that says what training added.
"""

from __future__ import annotations

import numpy as np

from vla_models.config import column_indices
from vla_models.constants import OBS_IMAGES, OBS_INSTRUCTION

from ..data.episodes import DatasetError

# sim.STATE_NAMES: the manipulated object's position and the goal (the hole), metres
TARGETS = {"peg": ["obj_0", "obj_1", "obj_2"], "hole": ["goal_x", "goal_y", "goal_z"]}
TARGET_COLUMNS = [c for cols in TARGETS.values() for c in cols]


def image_features(policy, images: dict[str, np.ndarray], instruction: str, batch: int = 64) -> np.ndarray:
    """(N, L x hidden) backbone tokens of N observations {view: (N, H, W, 3) uint8} with one instruction."""
    n = len(next(iter(images.values())))
    out = []
    for i in range(0, n, batch):
        chunk = {v: frames[i:i + batch] for v, frames in images.items()}
        size = len(next(iter(chunk.values())))
        features = policy.encode_images({OBS_IMAGES: chunk, OBS_INSTRUCTION: [instruction] * size})
        out.append(features.tokens.flatten(1).cpu().numpy())
    return np.concatenate(out)


def episode_frames(episodes, views: list[str], every: int = 1, limit: int | None = None,
                   seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frames of the episodes' views (every `every`-th, at most `limit`, drawn at random) and the targets
    at those frames: (N, 6) = peg xyz, hole xyz in metres."""
    picks = [(e, k) for e, ep in enumerate(episodes) for k in range(0, ep.length, every)]
    if limit is not None and len(picks) > limit:
        rng = np.random.default_rng(seed)
        picks = [picks[i] for i in sorted(rng.choice(len(picks), limit, replace=False))]
    images = {v: np.stack([episodes[e].frame(v, k) for e, k in picks]) for v in views}
    rows = {e: _target_rows(episodes[e]) for e in sorted({e for e, _ in picks})}
    return images, np.stack([rows[e][min(k, len(rows[e]) - 1)] for e, k in picks]).astype(np.float64)


def _target_rows(ep) -> np.ndarray:
    names = ep.meta.get("state_names") or []
    try:
        return np.asarray(ep.array("state"))[:, column_indices(TARGET_COLUMNS, names)]
    except KeyError as exc:
        raise DatasetError(f"{ep.path}: field 'state': columns {exc.args[0]} (the probe's targets) are not in the "
                           f"episode's state_names {names}") from None


class RidgeProbe:
    """Standardised features -> targets by ridge regression; the penalty picked on a fifth held back."""

    def __init__(self, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)) -> None:
        self.alphas = alphas

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "RidgeProbe":
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        order = np.random.default_rng(seed).permutation(len(z))
        cut = max(1, len(z) // 5)
        val, fit = order[:cut], order[cut:]
        errors = {a: np.abs(self._solve(z[fit], y[fit], a)(z[val]) - y[val]).mean() for a in self.alphas}
        self.alpha = min(errors, key=errors.get)
        self._predict = self._solve(z, y, self.alpha)
        return self

    @staticmethod
    def _solve(z: np.ndarray, y: np.ndarray, alpha: float):
        y_mean = y.mean(0)
        # dual form: (Z Z^T + a I)^-1 Y, cheap while samples < features
        k = z @ z.T
        coef = z.T @ np.linalg.solve(k + alpha * np.eye(len(z)), y - y_mean)
        return lambda q: q @ coef + y_mean

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._predict((x - self.mean) / self.std)


def score(predicted: np.ndarray, true: np.ndarray) -> dict:
    """Per target (peg, hole): mean absolute error per axis in mm, and R^2 per axis (1 = perfect,
    0 = no better than the mean position)."""
    out = {}
    for t, (name, _) in enumerate(TARGETS.items()):
        p, y = predicted[:, 3 * t:3 * t + 3], true[:, 3 * t:3 * t + 3]
        spread = ((y - y.mean(0)) ** 2).sum(0)
        r2 = [float(1 - ((p[:, a] - y[:, a]) ** 2).sum() / spread[a]) if spread[a] > 1e-12 else None for a in range(3)]
        out[name] = {"mae_mm": [float(v) for v in 1000 * np.abs(p - y).mean(0)], "r2": r2,
                     "spread_mm": [float(v) for v in 1000 * y.std(0)]}
    return out
