"""DIR/report.md of `vla demo --vision`: success of A (blind) and B (sees) along training, targets,
per-stage latency, B's rollouts, and the probe of B's image features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..evaluation.report import STAGES, _fmt, _pct, _save, plt

LABELS = {"blind": "A blind", "sees": "B sees"}


def _rate(cl: dict) -> str:
    lo, hi = cl["success_ci95"]
    return f"{_pct(cl['success_rate'])} ({cl['successes']}/{cl['episodes']}, CI {100 * lo:.0f}-{100 * hi:.0f} %)"


def _plot_curve(curve: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for variant, label in LABELS.items():
        if variant not in curve[0]:
            continue
        x = [row["sees"]["train_minutes"] for row in curve]  # B's clock: A trained the same steps
        y = np.array([100 * row[variant]["success_rate"] for row in curve])
        lo = y - [100 * row[variant]["success_ci95"][0] for row in curve]
        hi = [100 * row[variant]["success_ci95"][1] for row in curve] - y
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=4, label=label)
    ax.set_xlabel("B's training time (min)" + ("; A trained the same steps" if "blind" in curve[0] else ""))
    ax.set_ylabel("success (%), 95 % CI")
    ax.set_ylim(0, 100)
    ax.set_title("closed loop on held-out placements")
    ax.legend()
    return _save(fig, out)


def _plot_probe(placements: list[dict], out: Path) -> Path:
    """Top view of each placement: true position (dot) -> probe's prediction (line end), peg and hole,
    coloured by B's closed-loop outcome."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, offset) in zip(axes, (("peg", 0), ("hole", 3))):
        for row in placements:
            true, pred = np.array(row["true"][offset:offset + 2]), np.array(row["predicted"][offset:offset + 2])
            color = {True: "tab:green", False: "tab:red"}.get(row.get("success"), "tab:gray")
            ax.plot(*(1000 * np.stack([true, pred]).T), color=color, lw=1)
            ax.scatter(*(1000 * true), color=color, s=12)
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        ax.set_title(f"{name}: true (dot) -> probe of B's image features")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0].plot([], [], color="tab:green", label="B succeeded")
    axes[0].plot([], [], color="tab:red", label="B failed")
    axes[0].legend(fontsize=8)
    return _save(fig, out)


def _placement_errors(placements: list[dict]) -> dict:
    """Mean xy error (mm) of the probe on the first frame, for the placements B solved and failed."""
    out = {}
    for outcome in (True, False):
        rows = [r for r in placements if r.get("success") is outcome]
        out[outcome] = {name: (float(np.mean([1000 * np.linalg.norm(np.subtract(r["predicted"][o:o + 2], r["true"][o:o + 2]))
                                              for r in rows])) if rows else None) for name, o in (("peg", 0), ("hole", 3))}
        out[outcome]["n"] = len(rows)
    return out


def write_vision_report(result: dict, out: str | Path) -> Path:
    out = Path(out)
    assets = out / "report"
    assets.mkdir(parents=True, exist_ok=True)
    curve, budget, probe = result["curve"], result["budget"], result["probe"]
    final, both = curve[-1], "blind" in result["configs"]
    calibrated = budget["calibrated_steps_per_s"]
    seeing = (f"`{result['configs']['sees']}` (A + views {', '.join(result['views'])} at {result['image_size']} px and "
              "the instruction through the tiny Qwen2.5-VL, random weights, trained end to end)")
    lines = ["# Vision in the loop: A (blind) vs B (sees)" if both else "# Vision in the loop: B (sees) alone", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}",
             f"- task: Meta-World {result['task']}; expert {result['expert']} ({result['sampling']})" + (", same for A and B" if both else ""),
             (f"- A: `{result['configs']['blind']}` (hand position, gripper + contact wrench); B: {seeing}" if both else
              f"- B: {seeing}; overrides {result['overrides']}; A (blind) not trained in this run: its baseline is an "
              "earlier run's"),
             f"- data: {result['data']['demos']} demonstrations from placement seeds {result['data']['placement_seeds']} "
             f"(50 placements each); held-out set for probe and latency: {result['data']['heldout_demos']} (seed 1)",
             "- training: " + (f"B measured at {calibrated:.2f} steps/s, so {budget['minutes']:g} min = " if calibrated
                               else "a fixed budget of ") + f"{budget['steps']} steps x batch {budget['batch_size']}"
             + ("; A trained the same steps and schedule" if both else "") + f"; snapshots at steps {budget['snapshots']}",
             f"- closed loop: {result['closed_loop']['episodes']} placements of MT1 seed "
             f"{result['closed_loop']['placement_seed']} (not in training), <= {result['closed_loop']['max_steps']} steps; "
             f"last snapshot once per sampling seed {budget['sample_seeds']}, pooled; earlier ones with seed "
             f"{budget['sample_seeds'][0]}",
             f"- wall time: data {result['wall_time_s']['data']:.0f} s, training and evaluation "
             f"{result['wall_time_s']['train_and_eval']:.0f} s, total {result['wall_time_s']['total']:.0f} s", "",
             "## Success", "",
             *(["| B's training time | steps | A blind | B sees | B - A |", "|---|---|---|---|---|"] if both else
               ["| B's training time | steps | B sees |", "|---|---|---|"])]
    for row in curve:
        cells = [f"{row['sees']['train_minutes']:.1f} min", str(row["step"])]
        if both:
            diff = 100 * (row["sees"]["success_rate"] - row["blind"]["success_rate"])
            cells += [_rate(row["blind"]), _rate(row["sees"]), f"{diff:+.0f} points"]
        else:
            cells.append(_rate(row["sees"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![success]({_plot_curve(curve, assets / 'vision_success.png').relative_to(out)})", "",
              "## Targets (last snapshot)", ""]
    if both:
        gap = final["sees"]["success_rate"] - final["blind"]["success_rate"]
        lines.append(f"- B at least 30 points above A: {'met' if gap >= 0.30 else 'not met'} ({100 * gap:+.0f} points)")
    lines += [f"- B >= 80 %: {'met' if final['sees']['success_rate'] >= 0.80 else 'not met'} "
              f"({_pct(final['sees']['success_rate'])})", ""]
    lines += ["## Per-stage latency (batch 1, median ms, this CPU)", "",
              "| policy | sampling | " + " | ".join(s.replace("_ms", "") for s in STAGES) + " | total |",
              "|---|---|" + "---|" * (len(STAGES) + 1)]
    for variant, per_label in result["latency"].items():
        for label, stages in per_label.items():
            values = [stages.get(s, {}).get("median") for s in STAGES]
            lines.append(f"| {LABELS[variant]} | {label} | " + " | ".join(_fmt(v, 2) for v in values) + " | "
                         f"{_fmt(stages.get('total_ms', {}).get('median'), 2)} |")
    lines += ["", "## B's rollouts (views stacked: corner, gripperPOV)", ""]
    for i, rollout in enumerate(result["rollouts"]):
        sheet = assets / f"rollout_{i}_sheet.png"
        shutil.copy(rollout["contact_sheet"], sheet)
        lines.append(f"![rollout {i}, {'success' if rollout['success'] else 'failure'}]({sheet.relative_to(out)})")
    lines += ["", "## Where B's errors come from: a linear probe of its image features", "",
              f"Ridge regression from the backbone's tokens to the peg's and the hole's positions, fitted on "
              f"{probe['train_frames']} training frames, scored on {probe['heldout_frames']} held-out frames. "
              "`initial` = the same probe on the backbone B started from (random weights): what training added.", "",
              "| features | peg error x / y / z (mm) | peg R^2 x / y | hole error x / y / z (mm) | hole R^2 x / y |",
              "|---|---|---|---|---|"]
    for name in ("trained", "initial"):
        p = probe[name]
        lines.append(f"| {name} | " + " / ".join(_fmt(v) for v in p["peg"]["mae_mm"]) + " | "
                     + " / ".join(_fmt(v, 2) for v in p["peg"]["r2"][:2]) + " | "
                     + " / ".join(_fmt(v) for v in p["hole"]["mae_mm"]) + " | "
                     + " / ".join(_fmt(v, 2) for v in p["hole"]["r2"][:2]) + " |")
    spread = probe["trained"]
    lines += ["", f"Spread of the true positions (std, mm): peg {' / '.join(_fmt(v) for v in spread['peg']['spread_mm'])}, "
              f"hole {' / '.join(_fmt(v) for v in spread['hole']['spread_mm'])}.", ""]
    errors = _placement_errors(probe["placements"])
    lines += ["On the first frame of each closed-loop placement (B's last snapshot, sampling seed "
              f"{budget['sample_seeds'][0]}), the probe's xy error:", "",
              "| B's outcome | placements | peg xy error (mm) | hole xy error (mm) |", "|---|---|---|---|"]
    for outcome, name in ((True, "succeeded"), (False, "failed")):
        e = errors[outcome]
        lines.append(f"| {name} | {e['n']} | {_fmt(e['peg'])} | {_fmt(e['hole'])} |")
    lines += ["", f"![probe]({_plot_probe(probe['placements'], assets / 'vision_probe.png').relative_to(out)})", ""]
    report = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(report)
    return report
