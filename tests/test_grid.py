"""Grid expansion: sizes, include/exclude, and ids that are unique and stable across runs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
from conftest import base_config, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalrun.config.load import load_experiment
from evalrun.run.grid.grid import build_plan, expand_cells

TEMPS = [0.0, 0.5, 1.0, 1.5, 2.0]
EFFORTS = ["none", "low", "medium", "high"]
MODELS = ["m-a", "m-b", "m-c"]


def _experiment(tmp: Path, cfg: dict[str, Any]):
    cfg["providers"]["sim"]["extra_models"] = MODELS  # names of its own, served by the simulator
    return load_experiment(write_config(tmp, cfg, "grid.yaml"))


def _dataset(tmp: Path, n: int) -> Path:
    p = tmp / f"rows{n}.jsonl"
    p.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "question": f"{i}+1"}) + b"\n" for i in range(n)))
    return p


grid_case = st.fixed_dictionaries(
    {
        "models": st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
        "temps": st.lists(st.sampled_from(TEMPS), min_size=1, max_size=4, unique=True),
        "efforts": st.lists(st.sampled_from(EFFORTS), min_size=1, max_size=3, unique=True),
        "prompts": st.integers(1, 3),
        "excl_temp": st.lists(st.sampled_from(TEMPS), max_size=2, unique=True),
        "incl": st.lists(st.tuples(st.sampled_from(MODELS), st.sampled_from([0.25, 0.75])), max_size=2, unique=True),
        "rows": st.integers(1, 4),
        "repeats": st.integers(1, 3),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=grid_case)
def test_grid_size_and_unique_stable_ids(tmp_path: Path, case: dict[str, Any]) -> None:
    ds = _dataset(tmp_path, case["rows"])
    cfg = base_config(tmp_path, ds)
    cfg["models"] = case["models"]
    cfg["prompts"] = {f"p{i}": [{"role": "user", "content": f"v{i}: {{question}}"}] for i in range(case["prompts"])}
    incl = [{"model": m, "temperature": t} for m, t in case["incl"] if m in case["models"]]
    excl = [{"temperature": t} for t in case["excl_temp"]]
    cfg["grid"] = {"temperature": case["temps"], "reasoning_effort": case["efforts"], "exclude": excl, "include": incl}
    cfg["repeats"] = case["repeats"]
    kept_temps = [t for t in case["temps"] if t not in case["excl_temp"]]
    expected_cells = (
        len(case["models"]) * len(kept_temps) * len(case["efforts"]) * case["prompts"] + len(incl) * case["prompts"]
    )
    if expected_cells == 0:
        return  # an empty grid is a config error, covered by the bad-input corpus
    exp = _experiment(tmp_path, cfg)
    plan = build_plan(exp)
    assert len(plan.cells) == expected_cells
    specs = list(plan.specs())
    assert len(specs) == plan.total_requests == expected_cells * case["rows"] * case["repeats"]
    ids = [s.request_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert len({c.cell_id for c in plan.cells}) == len(plan.cells)
    # excluded temperatures never appear; includes carry their own value
    temps = {s.cell.params.get("temperature") for s in specs}
    assert not temps & set(case["excl_temp"])
    # a second expansion (a new process would do the same) yields identical ids, in order
    again = [s.request_id for s in build_plan(_experiment(tmp_path, cfg)).specs()]
    assert again == ids


def test_ids_change_exactly_when_the_request_changes(tmp_path: Path, dataset: Path) -> None:
    cfg = base_config(tmp_path, dataset)
    ids = {s.request_id for s in build_plan(_experiment(tmp_path, cfg)).specs()}
    cfg["reports_dir"] = str(tmp_path / "elsewhere")  # not part of a request
    assert {s.request_id for s in build_plan(_experiment(tmp_path, cfg)).specs()} == ids
    cfg["params"] = {"max_tokens": 257}  # a parameter changes: every id changes
    assert not {s.request_id for s in build_plan(_experiment(tmp_path, cfg)).specs()} & ids


def test_precedence_params_then_model_then_grid(tmp_path: Path, dataset: Path) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["params"] = {"max_tokens": 100, "temperature": 0.1, "seed": 1}
    cfg["models"] = [{"name": "m-a", "params": {"max_tokens": 200, "temperature": 0.2}}, "m-b"]
    cfg["grid"] = {"temperature": [0.9]}
    cells = {c.model: c.params for c in expand_cells(_experiment(tmp_path, cfg))}
    assert cells["m-a"] == {"max_tokens": 200, "temperature": 0.9, "seed": 1}
    assert cells["m-b"] == {"max_tokens": 100, "temperature": 0.9, "seed": 1}


def test_exclude_by_model_and_prompt_and_include_duplicate_is_ignored(tmp_path: Path, dataset: Path) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["models"] = ["m-a", "m-b"]
    cfg["prompts"] = {
        "x": [{"role": "user", "content": "{question}"}],
        "y": [{"role": "user", "content": "Q: {question}"}],
    }
    cfg["grid"] = {
        "temperature": [0.0, 1.0],
        "exclude": [{"model": "m-b", "prompt": "y"}],
        "include": [{"model": "m-a", "prompt": "x", "temperature": 0.0}],  # already there
    }
    cells = expand_cells(_experiment(tmp_path, cfg))
    got = sorted((c.model, c.prompt_id, c.params["temperature"]) for c in cells)
    want = sorted(
        (m, p, t) for m, p, t in itertools.product(["m-a", "m-b"], ["x", "y"], [0.0, 1.0]) if (m, p) != ("m-b", "y")
    )
    assert got == want


def test_specs_are_lazy(tmp_path: Path) -> None:
    """A million-request grid is a generator, not a list: the first spec comes at once."""
    ds = _dataset(tmp_path, 1000)
    cfg = base_config(tmp_path, ds)
    cfg["grid"] = {"temperature": [round(i * 0.01, 2) for i in range(100)], "seed": list(range(10))}
    plan = build_plan(_experiment(tmp_path, cfg))
    assert plan.total_requests == 1_000_000
    first = next(iter(plan.specs()))
    assert first.repeat == 0 and first.row_id == "r0"


def test_placeholders_and_literal_braces(tmp_path: Path, dataset: Path) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["prompts"] = {
        "p": [
            {"role": "system", "content": 'Answer as JSON like {"answer": 1} or {{"answer": 1}}.'},
            {"role": "user", "content": [{"type": "text", "text": "What is {question}? id={id}"}]},
        ]
    }
    spec = next(iter(build_plan(_experiment(tmp_path, cfg)).specs()))
    assert spec.messages[0]["content"] == 'Answer as JSON like {"answer": 1} or {"answer": 1}.'
    assert spec.messages[1]["content"] == [{"type": "text", "text": "What is 1 + 2? id=q1"}]
