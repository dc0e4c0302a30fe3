"""Plots of datasets (matplotlib, Agg backend: files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .episodes import list_episodes  # noqa: E402


def detour_profile(ep) -> tuple[np.ndarray, np.ndarray] | None:
    """(time from the detour start, normalised so the via-point is at 1; hand y - goal y in cm) over the
    transfer phase (twice the detour's duration); None for an episode without a completed detour."""
    detour = ep.meta.get("detour")
    if not detour or detour.get("via_step") is None:
        return None
    start, via = detour["start_step"], detour["via_step"]
    state = np.asarray(ep.array("state"))
    end = min(len(state), start + 2 * (via - start) + 1)
    lateral = (state[start:end, 1] - state[start:end, 37]) * 100  # hand y - goal y
    return np.arange(end - start) / max(via - start, 1), lateral


def plot_paths(dataset_dir: str | Path, out: str | Path) -> Path:
    """Left: top view of every episode's hand path. Right (when episodes have detours): the signed lateral
    offset from the straight approach along the way, coloured by mode: two families = two modes."""
    episodes = list_episodes(dataset_dir)
    profiles = [detour_profile(ep) for ep in episodes]
    has_modes = any(p is not None for p in profiles)
    fig, axes = plt.subplots(1, 2 if has_modes else 1, figsize=(11 if has_modes else 5.5, 4.5), squeeze=False)
    colours = {-1: "tab:blue", 0: "tab:grey", 1: "tab:orange"}
    names = {-1: "mode -1 (left via-point)", 0: "demo", 1: "mode +1 (right via-point)"}
    seen: set = set()
    for ep, profile in zip(episodes, profiles):
        mode = ep.meta.get("mode", 0)
        label = None if mode in seen else names.get(mode, str(mode))
        seen.add(mode)
        xy = np.asarray(ep.array("state"))[:, :2]
        axes[0, 0].plot(xy[:, 0], xy[:, 1], color=colours.get(mode, "black"), alpha=0.6, lw=1, label=label)
        if profile is not None:
            axes[0, 1].plot(*profile, color=colours.get(mode, "black"), alpha=0.7, lw=1.2, label=label)
    axes[0, 0].set(xlabel="hand x (m)", ylabel="hand y (m)", title=f"{len(episodes)} demonstrations (top view)")
    axes[0, 0].legend(loc="best", fontsize=8)
    if has_modes:
        axes[0, 1].axhline(0, color="black", lw=0.6, ls="--")
        axes[0, 1].set(xlabel="time from grasp (1 = via-point reached)", ylabel="hand y - hole y (cm)",
                       title="transfer phase: two path families")
        axes[0, 1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
