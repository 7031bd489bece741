"""Import floors and arrows inside evalrun/run/: how deep and how tangled the run stage is.

An arrow is one module of run/ importing another (lazy imports inside functions count, type-only
ones too, read with `ast` like tests/test_layout.py). A floor is one level of the longest import
chain: a module that imports nothing else of run/ is on floor 1. Package faces (`__init__`) are
left out so a re-export does not count as a floor of its own.

    .venv/bin/python tests/bench/layout_metrics.py
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "evalrun" / "run"


def _modules() -> dict[str, Path]:
    out = {}
    for path in RUN.rglob("*.py"):
        if path.name != "__init__.py":
            rel = path.relative_to(RUN.parent.parent).with_suffix("")
            out[".".join(rel.parts)] = path
    return out


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


def graph() -> dict[str, set[str]]:
    mods = _modules()
    out: dict[str, set[str]] = {}
    for module, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _targets(module, node):
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    found.add(name)
        out[module] = found
    return out


def floors(g: dict[str, set[str]]) -> int:
    @functools.cache
    def depth(m: str) -> int:
        return 1 + max((depth(t) for t in g[m]), default=0)

    return max(depth(m) for m in g)


def main() -> None:
    g = graph()
    arrows = sum(len(t) for t in g.values())
    print(f"run/ modules {len(g)}  floors {floors(g)}  arrows {arrows}")
    per = Counter(m.split(".")[2] if m.count(".") > 2 else "(top)" for m in g)
    for pkg, n in sorted(per.items()):
        print(f"  {pkg:10} {n} modules")


if __name__ == "__main__":
    main()
