"""The import graph of the three packages, and the picture of their layers drawn from it.

    python scripts/architecture.py [--out docs/img/architecture.png] [--json FILE]

Reads every module's imports (module level and inside functions) with `ast`, so the picture is
the code's, not a drawing that can drift. test/test_package_layout.py checks the same graph: no
circle between files, and imports only downwards through LAYERS.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vla_models", "vla_training", "vla_policy_ros")
# top to bottom: a module may import its own layer and any layer below it, never one above
LAYERS = ("vla_policy_ros", "vla_training.cli", "vla_training.demos", "vla_training.evaluation", "vla_training.training",
          "vla_training.data", "vla_training", "vla_models.runtime", "vla_models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in its file (a `from pkg import sub` names pkg.sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES and not target.startswith("vla_policy_ros.msg"):
                resolved = _resolve(target, known)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str) -> str:
    return next(layer for layer in LAYERS if name == layer or name.startswith(layer + "."))


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import from a lower layer into a higher one."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if rank[layer_of(b)] < rank[layer_of(a)])


def draw(edges: dict[str, set[str]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    members: dict[str, list[str]] = {layer: [] for layer in LAYERS}
    for name in edges:
        members[layer_of(name)].append(name)
    between = Counter((layer_of(a), layer_of(b)) for a, ts in edges.items() for b in ts if layer_of(a) != layer_of(b))
    fig, ax = plt.subplots(figsize=(13, 15))
    ax.set_axis_off()
    y, centre = 0.0, {}
    for layer in LAYERS:
        names = sorted(n[len(layer) + 1:] if n != layer else "__init__" for n in members[layer])
        names = [layer.rpartition(".")[2] + ".py"] if members[layer] == [layer] and "." in layer else names
        rows = [", ".join(names[i:i + 6]) for i in range(0, len(names), 6)]
        height = 0.5 + 0.32 * len(rows)
        ax.add_patch(FancyBboxPatch((0, y - height), 10, height, boxstyle="round,pad=0.05",
                                    fc="#eef3fb" if layer.startswith("vla_models") else
                                    "#f5f0e6" if layer.startswith("vla_training") else "#e8f5e9", ec="#555"))
        ax.text(0.15, y - 0.3, layer, fontsize=12, fontweight="bold", va="center")
        for i, row in enumerate(rows):
            ax.text(0.3, y - 0.65 - 0.32 * i, row, fontsize=9, va="center", family="monospace")
        centre[layer] = (y - height / 2, y - height, y)
        y -= height + 0.6
    for (a, b), count in sorted(between.items()):
        (_, a_bottom, _), (_, _, b_top) = centre[a], centre[b]
        x = 10.4 + 0.35 * LAYERS.index(b) + 0.05 * LAYERS.index(a)
        up = b_top > a_bottom
        ax.annotate("", xy=(x, b_top if not up else centre[b][1]), xytext=(x, a_bottom if not up else centre[a][2]),
                    arrowprops=dict(arrowstyle="->", color="#c62828" if up else "#1565c0", lw=0.8 + 0.15 * min(count, 10)))
    ax.text(0, 0.5, "Layers of the VLA policy suite: boxes are packages (modules listed); arrows are imports "
                    "(blue: downwards), drawn from the code by scripts/architecture.py", fontsize=10)
    ax.set_xlim(-0.2, 13.6)
    ax.set_ylim(y, 1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/img/architecture.png"), help="PNG of the layers")
    parser.add_argument("--json", help="also write the graph, its circles and upward imports to this file")
    args = parser.parse_args(argv)
    edges = graph()
    found, upward = cycles(edges), upward_imports(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports; circles: {found or 'none'}; "
          f"upward imports: {upward or 'none'}")
    print(f"wrote {draw(edges, Path(args.out))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"modules": {k: sorted(v) for k, v in edges.items()},
                                               "circles": found, "upward": upward}, indent=1))
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
