"""The house rules, checked: stages import one way, no circles (type-only ones included), no
module much over 400 lines, no function over 60, and inside the run stage its sub-packages
import one way too. Read with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "evalrun"
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # with ruff's C901 at 12 (pyproject.toml): cap functions, modules follow
UNCAPPED: tuple[str, ...] = ()  # packages the function cap skips (none: the whole package is capped)

# stage → the stages it may import. Foundations (errors, logs) sit below everything;
# the top (cli, plan, the package itself) may import anything. The simulator is a leaf that
# imports nothing of evalrun, like a third-party library: the experiment schema embeds its
# options model (one validation style), so config may import sim.options and nothing else.
ALLOWED = {
    "foundation": {"foundation"},
    "sim": {"sim"},
    "config": {"foundation", "config", "sim"},
    "run": {"foundation", "config", "run", "sim"},
    "analysis": {"foundation", "config", "run", "analysis"},
    "report": {"foundation", "config", "run", "analysis", "report"},
}
FOUNDATION = {"evalrun.errors", "evalrun.logs", "evalrun.quantiles", "evalrun"}
TOP = {"evalrun.cli", "evalrun.cli_parser", "evalrun.cli_many", "evalrun.cli_ci", "evalrun.plan", "evalrun.__main__"}
# what analysis and report may read of the run stage: the stored schema and file names, and
# only through the faces (`__init__`) of these two sub-packages, never a module behind them
RUN_SCHEMA = {"evalrun.run.store", "evalrun.run.records"}
# the run stage's sub-packages (run/grid/, run/send/, …) → the others they must never import.
# records sits under all of them; sending never touches storage; pacing knows nothing of
# scale-out (a shard's share of the rate is computed inside rate/). The modules at the top of
# run/ (runner, context, recorder, …) wire the packages: none of the packages imports them.
RUN_PACKAGES = {"grid", "records", "send", "rate", "http", "store", "scale"}
RUN_NEVER = {
    "records": RUN_PACKAGES - {"records"},
    "send": {"store"},
    "rate": {"scale"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The evalrun module an import names (a `from pkg import mod` names a module, too)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.startswith("evalrun"):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _with_faces(module: str, targets: set[str]) -> set[str]:
    """Importing a.b.c first runs the face a/b/__init__: a face that re-exports its package can
    close a circle that no import line shows. The module's own packages are already loaded."""
    own = {module.rsplit(".", i)[0] for i in range(module.count("."))}  # itself, if a face
    faces = {t.rsplit(".", i)[0] for t in targets for i in range(1, t.count("."))}
    return targets | {f for f in faces if f in MODULES and f not in own and f != "evalrun"}


RUNTIME_GRAPH = {m: _with_faces(m, t) for m, t in GRAPH.items()}


def _stage(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in TOP:
        return "top"
    return module.split(".")[1]


def test_stages_import_one_way() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        stage = _stage(module)
        if stage == "top":
            continue
        for target in targets:
            other = _stage(target)
            if other == "top" or other not in ALLOWED[stage]:
                wrong.append(f"{module} → {target}")
            elif stage == "config" and other == "sim" and target != "evalrun.sim.options":
                wrong.append(f"{module} → {target} (config may embed only the simulator's options schema)")
            elif stage in ("analysis", "report") and other == "run" and target not in RUN_SCHEMA:
                wrong.append(
                    f"{module} → {target} (analysis and report read a run only through the faces of run.store and run.records)"
                )
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(RUNTIME_GRAPH.get(node, ())):
            if nxt in ("evalrun",):
                continue
            if seen.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for module in sorted(RUNTIME_GRAPH):
        if module not in seen:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" → ".join(c) for c in cycles)


def _run_part(module: str) -> str | None:
    """run/'s sub-package a module belongs to, "top" for runner, context, …; None outside run/."""
    parts = module.split(".")
    if parts[:2] != ["evalrun", "run"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in RUN_PACKAGES else "top"


def test_run_packages_import_one_way() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        part = _run_part(module)
        if part in (None, "top"):
            continue
        for target in targets:
            other = _run_part(target)
            if other == "top":
                wrong.append(f"{module} → {target} (the top of run/ wires the packages; they never import it)")
            elif other in RUN_NEVER.get(part, ()):
                wrong.append(f"{module} → {target} (run/{part}/ never imports run/{other}/)")
    assert not wrong, "imports against the flow inside run/:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by what it does"


def test_no_utils_module() -> None:
    assert not [m for m in MODULES if m.rsplit(".", 1)[-1] in ("utils", "util", "helpers", "misc")]


def _long_functions(module: str, path: Path) -> list[str]:
    """`module.function (N lines)` for each function (nested and methods too) over the cap; a
    function's lines run from its `def` to its last line, its docstring included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{module}.{node.name} ({lines} lines, line {node.lineno})")
    return found


def test_function_length() -> None:
    capped = {m: p for m, p in MODULES.items() if not m.startswith(UNCAPPED)}
    assert "evalrun.sim.server" in capped and "evalrun.cli" in capped and "evalrun.run.runner" in capped
    too_long = [f for m, p in sorted(capped.items()) for f in _long_functions(m, p)]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them by what they do):\n" + "\n".join(
        too_long
    )


def test_function_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def short():\n    pass\n\n\nclass C:\n    async def long(self):\n{body}")
    assert _long_functions("m", path) == [f"m.long ({MAX_FUNCTION_LINES + 1} lines, line 6)"]


# manifest.json has one writer (run/store/manifest_io.py): the single-process run, --workers,
# Ray and merge all change it through its functions, so the paths cannot drift apart again
MANIFEST_WRITER = "evalrun.run.store.manifest_io"
_WRITES = {"write_json", "write_bytes", "write_text", "dump", "dumps", "replace", "rename", "open"}


def _manifest_writes(module: str, path: Path) -> list[str]:
    """`module:line call` for each call that writes a file or serializes and names a manifest
    (MANIFEST, "manifest.json", a `manifest` variable) in its target or arguments, and each
    dump of the record (`to_json_dict`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        target = [func.value] if isinstance(func, ast.Attribute) else []  # (run_dir / MANIFEST).write_text
        args = " ".join(ast.unparse(a) for a in [*target, *node.args, *(k.value for k in node.keywords)])
        if name == "to_json_dict" or (name in _WRITES and "manifest" in args.lower()):
            found.append(f"{module}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


def test_manifest_has_one_writer() -> None:
    writes = {m: _manifest_writes(m, p) for m, p in MODULES.items()}
    assert writes[MANIFEST_WRITER], "the check finds nothing even in the writer: it checks nothing"
    others = [w for m, found in sorted(writes.items()) if m != MANIFEST_WRITER for w in found]
    assert not others, "manifest.json is written outside run/store/manifest_io.py:\n" + "\n".join(others)


def test_manifest_writer_check_finds_a_write(tmp_path: Path) -> None:
    path = tmp_path / "w.py"
    path.write_text("def f(d, m):\n    write_json(d / MANIFEST, m)\n    (d / 'manifest.json').write_text('{}')\n")
    assert len(_manifest_writes("w", path)) == 2
