"""`vla compare`: gather evaluations of several runs into DIR/report.md with tables and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGES = ["preprocess_ms", "backbone_ms", "sensor_ms", "fusion_ms", "expert_ms"]


def _fmt(x, digits=1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_success(evals: list[dict], out: Path) -> Path:
    labels, rows = [], []
    for ev in evals:
        for name, cl in ev.get("closed_loop", {}).items():
            labels.append(f"{ev['name']}\n{name}")
            rows.append(cl)
    return plot_success_bars(labels, rows, out)


def plot_success_bars(labels: list[str], rows: list[dict], out: Path, title: str = "closed loop, held-out placements",
                      per_seed: bool = False) -> Path:
    """One bar per closed loop (`success_rate`) with its 95 % interval (`success_ci95`); per_seed: each row's
    rate per sampling seed (`per_seed`, pooled rows) as dots on its bar."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    rates = [100 * cl["success_rate"] for cl in rows]
    lo = [100 * (cl["success_rate"] - cl["success_ci95"][0]) for cl in rows]
    hi = [100 * (cl["success_ci95"][1] - cl["success_rate"]) for cl in rows]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.bar(labels, rates, yerr=[lo, hi], capsize=4, color=[colors[i % len(colors)] for i in range(len(rates))])
    if per_seed:
        for x, cl in enumerate(rows):
            seeds = [100 * v for v in cl["per_seed"].values()]
            ax.plot([x] * len(seeds), seeds, "o", color="k", label="per sampling seed" if x == 0 else None)
        ax.legend(loc="lower right")
    ax.set_ylabel("success (%) with 95 % CI")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    return _save(fig, out)


def _plot_path_error(evals: list[dict], out: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    data = [(ev["name"], ev["offline"]) for ev in evals if ev.get("offline")]
    ax1.boxplot([o["errors_mm"] for _, o in data], showfliers=False)
    ax1.set_xticks(range(1, len(data) + 1), [n for n, _ in data])
    ax1.set_ylabel("path error (mm)")
    ax1.set_title("distribution over all chunk steps")
    for name, o in data:
        steps = [(h + 1, v) for h, v in enumerate(o["per_step_mean_mm"]) if v is not None]
        ax2.plot([h for h, _ in steps], [v for _, v in steps], marker="o", ms=3, label=name)
    ax2.set_xlabel("step in chunk")
    ax2.set_ylabel("mean path error (mm)")
    ax2.set_title("error growth over the horizon")
    ax2.legend(fontsize=8)
    return _save(fig, out)


def _plot_latency(latency: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = list(latency)
    bottom = np.zeros(len(labels))
    for stage in STAGES:
        values = np.array([latency[label].get(stage, {}).get("median", 0.0) for label in labels])
        if values.any():
            ax.bar(labels, values, bottom=bottom, label=stage.replace("_ms", ""))
            bottom += values
    ax.set_ylabel("median ms, batch 1")
    ax.set_title("latency per stage")
    ax.legend(fontsize=8)
    return _save(fig, out)


def _plot_bimodal(samples: dict, out: Path) -> Path:
    """samples: {expert: {"demos": [paths (T,2)], "samples": [paths (H,2)]}} in mm relative to the start."""
    fig, axes = plt.subplots(1, len(samples), figsize=(5 * len(samples), 4), squeeze=False)
    for ax, (name, d) in zip(axes[0], samples.items()):
        for path in d["demos"]:
            ax.plot(path[:, 0], path[:, 1], color="grey", alpha=0.5, lw=1)
        for path in d["samples"]:
            ax.plot(path[:, 0], path[:, 1], color="tab:red", alpha=0.35, lw=1)
        ax.plot([], [], color="grey", label="recorded chunks (both modes)")
        ax.plot([], [], color="tab:red", label="policy samples")
        ax.set(title=name, xlabel="dx from current hand (mm)", ylabel="dy (mm)")
        ax.legend(fontsize=8)
    fig.suptitle("bimodal task: sampled chunks at the detour start, over the demonstrations")
    return _save(fig, out)


def targets(evals: list[dict], success: dict[str, float], modes: float = 0.35, between: float = 0.15) -> list[dict]:
    """Each target met or not: closed-loop success of an expert (pooled over its sampling seeds when it
    has several) >= success[expert]; on the bimodal set, each mode >= `modes` and between <= `between`
    for the experts that sample."""
    rows = []
    for ev in evals:
        if ev["name"] in success and ev.get("closed_loop"):
            pooled = ev.get("pooled") or next(iter(ev["closed_loop"].values()))
            lo, hi = pooled["success_ci95"]
            rows.append({"target": f"{ev['name']} success >= {100 * success[ev['name']]:.0f} %"
                                   + (" (pooled seeds)" if ev.get("pooled") else ""),
                         "measured": f"{100 * pooled['success_rate']:.0f} % ({pooled['successes']}/{pooled['episodes']}, "
                                     f"CI {100 * lo:.0f}-{100 * hi:.0f} %)",
                         "met": pooled["success_rate"] >= success[ev["name"]]})
        d = ev.get("diversity")
        if d and ev["expert"] != "regression" and d.get("mode_fractions"):
            f = d["mode_fractions"]
            rows.append({"target": f"{ev['name']}: each mode >= {100 * modes:.0f} %, between <= {100 * between:.0f} %",
                         "measured": f"{100 * f.get('-1', 0):.0f} % / {100 * f.get('+1', 0):.0f} %, between "
                                     f"{100 * f.get('between', 0):.0f} %",
                         "met": min(f.get("-1", 0), f.get("+1", 0)) >= modes and f.get("between", 1) <= between})
    return rows


def write_report(evals: list[dict], out_dir: str | Path, context: dict, bimodal_samples: dict | None = None,
                 target_rows: list[dict] | None = None) -> Path:
    """evals: one dict per run (name, expert, closed_loop {label: ...}, pooled, offline, latency, diversity)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    experts = ", ".join(dict.fromkeys(ev["expert"] for ev in evals))
    lines = [f"# Action experts compared ({experts})", ""]
    lines += ["## Setup (to reproduce)", ""]
    for key, value in context.items():
        lines.append(f"- **{key}**: {value}")
    if target_rows:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in target_rows]
    lines += ["", "## Closed-loop success (held-out placements)", "",
              "| run | expert | sampler | episodes | success | 95 % CI | mean length (successes) |", "|---|---|---|---|---|---|---|"]
    for ev in evals:
        for label, cl in ev.get("closed_loop", {}).items():
            lo, hi = cl["success_ci95"]
            lines.append(f"| {ev['name']} | {ev['expert']} | {label} | {cl['episodes']} | {100 * cl['success_rate']:.0f} % "
                         f"({cl['successes']}/{cl['episodes']}) | {100 * lo:.0f}-{100 * hi:.0f} % | "
                         f"{_fmt(cl['length_success']['mean'])} |")
        pooled = ev.get("pooled")
        if pooled:
            lo, hi = pooled["success_ci95"]
            per_seed = ", ".join(f"seed {s}: {100 * r:.0f} %" for s, r in pooled["per_seed"].items())
            lines.append(f"| {ev['name']} | {ev['expert']} | **pooled** ({per_seed}) | {pooled['episodes']} | "
                         f"**{100 * pooled['success_rate']:.0f} %** ({pooled['successes']}/{pooled['episodes']}) | "
                         f"{100 * lo:.0f}-{100 * hi:.0f} % | |")
    lines += ["", "Regression is deterministic per checkpoint: its one closed loop is every sampling seed's. The "
              "pooled interval treats the seeds' episodes as independent; they share the placements, so it is "
              "somewhat narrower than the truth.", "", f"![success]({_plot_success(evals, out / 'success.png').name})", ""]
    if any(ev.get("offline") for ev in evals):
        lines += ["## Offline path error (integrated chunk vs recorded future, mm)", "",
                  "| run | samples | mean | median | p95 | " + " | ".join(f"{d} mean" for d in ("dx", "dy", "dz")) + " |",
                  "|---|---|---|---|---|---|---|---|"]
        for ev in evals:
            o = ev.get("offline")
            if not o:
                continue
            per = [_fmt(v["mean"], 2) for v in o["per_dim_mm"].values()]
            lines.append(f"| {ev['name']} | {o['samples']} | {_fmt(o['overall_mm']['mean'], 2)} | "
                         f"{_fmt(o['overall_mm']['median'], 2)} | {_fmt(o['overall_mm']['p95'], 2)} | " + " | ".join(per) + " |")
        lines += ["", f"![path error]({_plot_path_error(evals, out / 'path_error.png').name})", ""]
    latency = {}
    for ev in evals:
        latency.update(ev.get("latency", {}))
    if latency:
        lines += ["## Latency per stage (batch 1, same process and inputs, ms: median / p95)", "",
                  "| variant | " + " | ".join(s.replace("_ms", "") for s in STAGES) + " | total |",
                  "|---|" + "---|" * (len(STAGES) + 1)]
        for label, stages in latency.items():
            cells = [f"{_fmt(stages[s]['median'], 2)} / {_fmt(stages[s]['p95'], 2)}" if s in stages else "-" for s in STAGES]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(stages['total_ms']['median'], 2)} / "
                         f"{_fmt(stages['total_ms']['p95'], 2)} |")
        lines += ["", f"![latency]({_plot_latency(latency, out / 'latency.png').name})", ""]
    if any(ev.get("diversity") for ev in evals):
        lines += ["## Diversity and modes (bimodal demonstrations)", "",
                  "| run | observations | samples each | mean pairwise distance (mm) | mode -1 | mode +1 | between | "
                  "classifier on recorded chunks |", "|---|---|---|---|---|---|---|---|"]
        for ev in evals:
            d = ev.get("diversity")
            if not d:
                continue
            f = d.get("mode_fractions", {})
            lines.append(f"| {ev['name']} | {d.get('classified_observations', d['observations'])} | "
                         f"{d['samples_per_observation']} | {_fmt(d['mean_pairwise_mm'], 2)} | "
                         f"{100 * f.get('-1', float('nan')):.0f} % | {100 * f.get('+1', float('nan')):.0f} % | "
                         f"{100 * f.get('between', float('nan')):.0f} % | "
                         f"{100 * d.get('classifier_accuracy_on_recorded', float('nan')):.0f} % |")
        lines.append("")
        if bimodal_samples:
            lines += [f"![bimodal]({_plot_bimodal(bimodal_samples, out / 'bimodal_samples.png').name})", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"context": context, "runs": evals}, indent=2, default=float))
    return out / "report.md"
