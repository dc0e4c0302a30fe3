"""`vla data info`: what a dataset holds (episodes, lengths, rates, views, channels, action statistics),
and with `--check` each episode's streams and what a policy config would do with it."""

from __future__ import annotations

import numpy as np

from .episodes import DatasetError, list_episodes
from .samples import check_episode


def episode_report(ep, config=None) -> dict:
    """Which streams an episode has, and (with a config) what training would do with it."""
    report = {"episode": ep.name, "length": ep.length, "views": ep.views,
              "frames": {v: ep.frame_count(v) for v in ep.views},
              "sensor_channels": int(ep.array("sensor").shape[1]) if ep.has("sensor") else None,
              "state_dim": int(ep.array("state").shape[1]) if ep.has("state") else None, "notes": []}
    if config is None:
        return report
    try:
        check_episode(ep, config)
    except DatasetError as exc:
        report["notes"].append(f"rejected: {exc}")
        return report
    if config.sensor.channels and not ep.has("sensor"):
        report["notes"].append("no sensor: trained with a masked sensor window")
    unused = [v for v in ep.views if v not in config.views]
    if unused:
        report["notes"].append(f"views {unused} dropped (not in the config's views)")
    return report


def dataset_info(dataset_dir: str, check: bool = False, config=None) -> dict:
    episodes = list_episodes(dataset_dir)
    if check:
        for ep in episodes:
            ep.validate()
    actions = np.concatenate([np.asarray(ep.array("actions")) for ep in episodes])
    first = episodes[0].meta
    lengths = [ep.length for ep in episodes]
    info = {
        "dataset": str(dataset_dir), "episodes": len(episodes), "steps": int(sum(lengths)),
        "length": {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)},
        "instructions": sorted({ep.instruction for ep in episodes}),
        "views": first.get("views", []),
        "image_shape": {v: list(episodes[0].frame_shape(v)) for v in episodes[0].views},
        "rates_hz": {k: round(v, 3) for k, v in first.get("rates_hz", {}).items() if v},
        "state_dim": int(episodes[0].array("state").shape[1]) if episodes[0].has("state") else 0,
        "state_names": first.get("state_names", []),
        "sensor_channels": next((int(ep.array("sensor").shape[1]) for ep in episodes if ep.has("sensor")), 0),
        "episodes_with_sensor": sum(ep.has("sensor") for ep in episodes),
        "action_names": first.get("action_names", []),
        "action_units": first.get("action_units", []),
        "actions": {"mean": actions.mean(0).round(5).tolist(), "std": actions.std(0).round(5).tolist(),
                    "min": actions.min(0).round(5).tolist(), "max": actions.max(0).round(5).tolist(),
                    "constant": (actions.max(0) - actions.min(0) < 1e-9).tolist()},
        "checked": check,
    }
    if check or config is not None:
        info["per_episode"] = [episode_report(ep, config) for ep in episodes]
    modes = [ep.meta.get("mode") for ep in episodes if ep.meta.get("mode") is not None]
    if modes:
        info["modes"] = {str(m): modes.count(m) for m in sorted(set(modes))}
    return info


def format_info(info: dict) -> str:
    views = ", ".join(f"{v} {info['image_shape'].get(v)}" for v in info["views"]) or "-"
    rates = ", ".join(f"{k} {v}" for k, v in info["rates_hz"].items())
    lines = [f"dataset      {info['dataset']}",
             f"episodes     {info['episodes']} ({info['steps']} steps; length min/mean/max "
             f"{info['length']['min']}/{info['length']['mean']:.1f}/{info['length']['max']})",
             f"instruction  {'; '.join(info['instructions'])}",
             f"views        {views}",
             f"rates (Hz)   {rates}",
             f"state        {info['state_dim']} dims",
             f"sensor       {info['sensor_channels']} channels ({info['episodes_with_sensor']} of "
             f"{info['episodes']} episodes have it)"]
    if "modes" in info:
        lines.append(f"modes        {info['modes']}")
    lines.append(f"{'action':<12}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}  constant")
    a = info["actions"]
    for i, name in enumerate(info["action_names"] or [f"a{i}" for i in range(len(a["mean"]))]):
        lines.append(f"{name:<12}{a['mean'][i]:>10.4f}{a['std'][i]:>10.4f}{a['min'][i]:>10.4f}{a['max'][i]:>10.4f}  "
                     f"{'yes' if a['constant'][i] else ''}")
    for report in info.get("per_episode", []):
        sensor = f"sensor {report['sensor_channels']} ch" if report["sensor_channels"] else "no sensor"
        frames = " ".join(f"{v}:{n}" for v, n in report["frames"].items())
        lines.append(f"  {report['episode']}: {report['length']} steps, {sensor}, state "
                     f"{report['state_dim'] or '-'}, frames {frames}" + "".join(f"\n    {n}" for n in report["notes"]))
    if info["checked"]:
        lines.append("check        every array read and valid")
    return "\n".join(lines)
