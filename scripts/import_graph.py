"""The package's import graph, read from the code: modules, imports between them, the longest
import chain, cycles, and imports that run back up the phases; and a picture of it.

    python scripts/import_graph.py                      # figures for src/edgetune
    python scripts/import_graph.py --draw docs/imports.png
    python scripts/import_graph.py --root OTHER/src/edgetune   # another checkout, e.g. an older commit

A module is named by its dotted path inside the package (`core.files`, `cli`). An import is one
module naming another, at the top or inside a function, counted once per pair.
"""

import argparse
import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "edgetune"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package's __init__ by the package's name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "__init__"] = path
    return found


def imports(root: Path = ROOT) -> dict[str, set[str]]:
    """For each module, the package's modules it imports."""
    known = modules(root)
    graph = {}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x, from .x import y
                    base = package[: len(package) - node.level + 1]
                    stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif node.module and node.module.split(".")[0] == "edgetune":
                    stem = node.module.partition(".")[2]
                else:
                    continue
                for alias in node.names:  # `from pkg import module` names a module
                    child = f"{stem}.{alias.name}" if stem else alias.name
                    targets.add(child if child in known else stem or "__init__")
            elif isinstance(node, ast.Import):
                targets |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("edgetune.")}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (the graph has no cycles)."""

    @functools.cache
    def down(m: str) -> tuple[str, ...]:
        return (m, *max((down(t) for t in graph[m]), key=len, default=()))

    return list(max((down(m) for m in graph), key=len))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle found by a depth-first walk, as the modules along it."""
    found, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                found.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def phase(module: str, phases: tuple[str, ...]) -> int:
    """A module's rank: its phase's place in `phases`; the top-level modules (cli) rank above all."""
    first = module.split(".")[0]
    return phases.index(first) if first in phases else len(phases)


def back_up(graph: dict[str, set[str]], phases: tuple[str, ...]) -> list[tuple[str, str]]:
    """Imports from a phase into a later one."""
    return sorted((m, t) for m, ts in graph.items() for t in ts if phase(t, phases) > phase(m, phases))


def draw(graph: dict[str, set[str]], phases: tuple[str, ...], out: Path) -> None:
    """One row per phase, top of the pipeline first, each module a box; an arrow per import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[m for m in sorted(graph) if phase(m, phases) == r] for r in range(len(phases), -1, -1)]
    rows = [r for r in rows if r]
    width = max(len(r) for r in rows)
    where = {m: ((i + 0.5) * width / len(r), -y) for y, r in enumerate(rows) for i, m in enumerate(r)}
    fig, ax = plt.subplots(figsize=(width * 1.25, len(rows) * 1.1))
    for m, ts in graph.items():
        for t in ts:
            ax.annotate("", where[t], where[m], arrowprops={"arrowstyle": "->", "color": "#9aa", "lw": 0.5})
    for m, (x, y) in where.items():
        ax.text(
            x, y, m.rpartition(".")[2] or m, ha="center", va="center", fontsize=7, bbox={"fc": "white", "ec": "#456"}
        )
    for y, r in enumerate(rows):
        ax.text(
            -0.4,
            -y,
            r[0].split(".")[0] if phase(r[0], phases) < len(phases) else "top",
            ha="right",
            va="center",
            fontsize=9,
            weight="bold",
        )
    ax.set_xlim(-1.6, width + 0.2)
    ax.set_ylim(-len(rows) + 0.5, 0.5)
    ax.axis("off")
    n = sum(map(len, graph.values()))
    ax.set_title(f"{len(graph)} modules, {n} imports; every arrow points down a phase or within one", fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the package folder (default: src/edgetune)")
    parser.add_argument("--draw", type=Path, help="write the picture here (PNG)")
    args = parser.parse_args()
    graph = imports(args.root)
    phases = tuple(p.name for p in sorted(args.root.iterdir()) if (p / "__init__.py").is_file())
    try:  # the package's own order of phases, where it declares one
        phases = ast.literal_eval(
            next(
                n.value
                for n in ast.parse((args.root / "__init__.py").read_text()).body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PHASES"
            )
        )
    except StopIteration:
        pass
    chain = longest_chain(graph) if not cycles(graph) else []
    print(f"modules: {len(graph)}")
    print(f"imports: {sum(map(len, graph.values()))}")
    print(f"longest chain: {len(chain)} modules: {' -> '.join(chain)}")
    print(f"cycles: {len(cycles(graph))}")
    print(f"imports back up the phases: {len(back_up(graph, phases))}")
    if args.draw:
        draw(graph, phases, args.draw)
        print(f"drawn: {args.draw}")


if __name__ == "__main__":
    main()
