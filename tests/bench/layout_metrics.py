"""Import floors and arrows inside evalrun/run/: how deep and how tangled the run stage is.

An arrow is one module of run/ importing another (lazy imports inside functions count, type-only
ones too, read with `ast` like tests/test_layout.py). A floor is one level of the longest import
chain: a module that imports nothing else of run/ is on floor 1. Package faces (`__init__`) are
left out so a re-export does not count as a floor of its own: a name imported through a face
is an arrow to the module the face takes it from.

Then the same per sub-package (run/grid/, run/send/, …; "(top)" is runner, context and the other
modules directly in run/): its modules, floors and arrows inside it, and the arrows between
packages (one per importing module and imported module, as above), with the packages' own floors.

    .venv/bin/python tests/bench/layout_metrics.py [RUN_DIR]     (default: this checkout's evalrun/run)
"""

from __future__ import annotations

import ast
import functools
import sys
from collections import Counter
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "evalrun" / "run"


def _name(run: Path, path: Path) -> str:
    rel = path.relative_to(run.parent.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _modules(run: Path) -> dict[str, Path]:
    return {_name(run, p): p for p in run.rglob("*.py") if p.name != "__init__.py"}


def _targets(module: str, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = module.split(".")[: -node.level]
            base = ".".join([*parent, base] if base else parent)
        return [f"{base}.{a.name}" for a in node.names] + [base]
    return []


def _faces(run: Path) -> dict[str, str]:
    """face.name → the module it re-exports the name from."""
    out = {}
    for path in run.rglob("__init__.py"):
        face = _name(run, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.update({f"{face}.{a.asname or a.name}": node.module for a in node.names})
    return out


def graph(run: Path = RUN) -> dict[str, set[str]]:
    mods, faces = _modules(run), _faces(run)
    out: dict[str, set[str]] = {}
    for module, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _targets(module, node):
                name = faces.get(name, name)
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    found.add(name)
        out[module] = found
    return out


def floors(g: dict[str, set[str]]) -> int:
    @functools.cache
    def depth(m: str) -> int:
        return 1 + max((depth(t) for t in g[m] if t in g), default=0)

    return max((depth(m) for m in g), default=0)


def package(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 else "(top)"


def main() -> None:
    run = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else RUN
    g = graph(run)
    print(f"run/ modules {len(g)}  floors {floors(g)}  arrows {sum(len(t) for t in g.values())}")
    pkgs = sorted({package(m) for m in g})
    between: Counter[tuple[str, str]] = Counter()
    for m, targets in g.items():
        between.update((package(m), package(t)) for t in targets if package(t) != package(m))
    for pkg in pkgs:
        inner = {m: {t for t in g[m] if package(t) == pkg} for m in g if package(m) == pkg}
        out = ", ".join(f"{b} {n}" for (a, b), n in sorted(between.items()) if a == pkg)
        print(
            f"  {pkg:8} modules {len(inner):2}  floors {floors(inner):2}  arrows inside "
            f"{sum(len(t) for t in inner.values()):3}  out {sum(n for (a, _), n in between.items() if a == pkg):3}"
            + (f"  → {out}" if out else "")
        )
    pg = {p: {b for (a, b) in between if a == p} for p in pkgs}
    print(f"packages {len(pkgs)}  package floors {floors(pg)}  arrows between packages {sum(between.values())}")


if __name__ == "__main__":
    main()
