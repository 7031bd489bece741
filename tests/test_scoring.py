"""Scorers as a table (row in → score, pass out), the statistics against hand-computed
values, and a custom scorer loaded from the user's own module."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from evalrun.analysis.scoring import Scorers, parse_number
from evalrun.analysis.stats import mcnemar_exact, paired_bootstrap_ci, wilson_interval
from evalrun.config.scorers import ScorerConfig
from evalrun.errors import ConfigError
from evalrun.run.records.coerce import Notes
from evalrun.run.records.coerce import logprobs as flatten
from evalrun.run.records.records import Logprobs

ADAPTER = TypeAdapter(ScorerConfig)


def lp(*alts: tuple[str, float]) -> Logprobs | None:
    """One generated token whose top_logprobs are `alts` (probabilities), as the run keeps it."""
    tops = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in alts]
    return flatten([{**tops[0], "top_logprobs": tops}], "logprobs", Notes())


def score(
    spec: dict[str, Any],
    content: str | None,
    data: dict[str, str] | None = None,
    status: str = "ok",
    logprobs: Any = None,
) -> tuple[float | None, bool]:
    scorers = Scorers([ADAPTER.validate_python(spec)], Path("."))
    row = {
        "status": status,
        "content": content,
        "logprobs": logprobs,
        **{f"data_{k}": v for k, v in (data or {}).items()},
    }
    scorers.apply([row], "data_")
    name = scorers.names[0]
    return row[f"score_{name}"], row[f"pass_{name}"]


EXACT = {"type": "exact_match", "expected": "{answer}"}
CASES = [
    # exact match and its normalisation options
    (EXACT, "42", {"answer": "42"}, (1.0, True)),
    (EXACT, "  42 \n", {"answer": "42"}, (1.0, True)),  # whitespace by default
    (EXACT, "42.", {"answer": "42"}, (0.0, False)),
    ({**EXACT, "normalize": ["punctuation"]}, "42.", {"answer": "42"}, (1.0, True)),
    ({**EXACT, "normalize": ["case"]}, "PARIS", {"answer": "paris"}, (1.0, True)),
    ({**EXACT, "normalize": []}, " paris", {"answer": "paris"}, (0.0, False)),
    # regex-extract-then-compare
    ({**EXACT, "extract": r"answer is (\w+)"}, "The answer is B.", {"answer": "B"}, (1.0, True)),
    ({**EXACT, "extract": r"answer is (\w+)"}, "No idea", {"answer": "B"}, (0.0, False)),
    # contains / not contains / regex
    ({"type": "contains", "value": "{city}", "normalize": ["case"]}, "It is PARIS.", {"city": "Paris"}, (1.0, True)),
    ({"type": "not_contains", "value": "sorry"}, "Sure, here it is", None, (1.0, True)),
    ({"type": "not_contains", "value": "sorry"}, "sorry, I can't", None, (0.0, False)),
    ({"type": "regex", "pattern": r"^\d+$"}, "123", None, (1.0, True)),
    ({"type": "regex", "pattern": r"^\d+$"}, "12a", None, (0.0, False)),
    # numeric with tolerance, number pulled from free text
    ({"type": "numeric"}, "The answer is 1,234.", {"answer": "1234"}, (1.0, True)),
    ({"type": "numeric"}, "First 3 then 7", {"answer": "7"}, (1.0, True)),  # the last number
    ({"type": "numeric", "tolerance": 0.01}, "3.145", {"answer": "3.14"}, (1.0, True)),
    ({"type": "numeric", "tolerance": 0.001}, "3.145", {"answer": "3.14"}, (0.0, False)),
    ({"type": "numeric", "rel_tolerance": 0.05}, "104", {"answer": "100"}, (1.0, True)),
    ({"type": "numeric"}, "-12", {"answer": "-12"}, (1.0, True)),
    ({"type": "numeric"}, "no number", {"answer": "5"}, (0.0, False)),
    (
        {"type": "numeric", "extract": r'"answer":\s*(-?[0-9.]+)'},
        '{"id": 9, "answer": 36}',
        {"answer": "36"},
        (1.0, True),
    ),
    # JSON
    ({"type": "json_valid"}, '{"a": 1}', None, (1.0, True)),
    ({"type": "json_valid"}, '{"a": 1', None, (0.0, False)),
    (
        {
            "type": "json_schema",
            "schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
        },
        '{"a": 1}',
        None,
        (1.0, True),
    ),
    (
        {
            "type": "json_schema",
            "schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
        },
        '{"a": "one"}',
        None,
        (0.0, False),
    ),
    ({"type": "json_schema", "schema_column": "schema"}, "[1, 2]", {"schema": '{"type": "array"}'}, (1.0, True)),
    # errors never pass
    (EXACT, None, {"answer": "42"}, (0.0, False)),
]


@pytest.mark.parametrize("spec, content, data, expected", CASES)
def test_scorer_table(spec, content, data, expected) -> None:
    assert score(spec, content, data) == expected


def test_error_rows_score_null_and_fail() -> None:
    assert score(EXACT, "42", {"answer": "42"}, status="error") == (None, False)


@pytest.mark.parametrize(
    "alts, expected, want_score, want_pass",
    [
        ([("B", 0.6), ("A", 0.3), ("C", 0.05)], "B", 0.6 / 0.95, True),
        ([("B", 0.6), ("A", 0.3), ("C", 0.05)], "A", 0.3 / 0.95, False),
        ([(" C", 0.5), ("D", 0.4)], "C", 0.5 / 0.9, True),  # a leading space is not a different option
        ([("B", 0.6), ("A", 0.3)], "D", 0.0, False),  # the expected option was not even listed
    ],
)
def test_choice_by_logprobs(alts, expected, want_score, want_pass) -> None:
    s, p = score(
        {"type": "choice_logprobs", "expected": "{answer}"}, alts[0][0], {"answer": expected}, logprobs=lp(*alts)
    )
    assert s == pytest.approx(want_score) and p is want_pass


def test_custom_scorer_from_user_module(tmp_path: Path) -> None:
    (tmp_path / "my_checks.py").write_text(
        "def polite(row, response):\n"
        "    return {'score': 0.25 if 'please' in (response['content'] or '') else 0.0, 'pass': row['answer'] == 'x'}\n"
        "def ratio(row, response):\n"
        "    return len(response['content']) / 10\n"
    )
    spec = ADAPTER.validate_python({"type": "custom", "function": "my_checks:polite", "path": "."})
    scorers = Scorers([spec], tmp_path)
    rows = [
        {"status": "ok", "content": "please", "data_answer": "x"},
        {"status": "ok", "content": "no", "data_answer": "y"},
    ]
    scorers.apply(rows, "data_")
    assert [(r["score_custom"], r["pass_custom"]) for r in rows] == [(0.25, True), (0.0, False)]
    ratio = Scorers(
        [ADAPTER.validate_python({"name": "r", "type": "custom", "function": "my_checks:ratio", "threshold": 0.5})],
        tmp_path,
    )
    rows = [{"status": "ok", "content": "x" * 7}, {"status": "ok", "content": "x" * 3}]
    ratio.apply(rows, "data_")
    assert [(r["score_r"], r["pass_r"]) for r in rows] == [(0.7, True), (0.3, False)]
    with pytest.raises(ConfigError, match="cannot load custom scorer"):
        Scorers([ADAPTER.validate_python({"type": "custom", "function": "nope_module:f"})], tmp_path)


def test_a_failing_custom_scorer_costs_its_score_not_the_report(tmp_path: Path) -> None:
    (tmp_path / "bad_checks.py").write_text("def boom(row, response):\n    raise KeyError('x')\n")
    scorers = Scorers([ADAPTER.validate_python({"type": "custom", "function": "bad_checks:boom"})], tmp_path)
    rows = [{"status": "ok", "content": "a"}]
    scorers.apply(rows, "data_")
    assert (rows[0]["score_custom"], rows[0]["pass_custom"]) == (None, False)


@pytest.mark.parametrize(
    "text, value",
    [("42", 42.0), ("x = -3.5!", -3.5), ("1,234,567", 1234567.0), ("2e3", 2000.0), ("none", None), (None, None)],
)
def test_parse_number(text, value) -> None:
    assert parse_number(text) == value


def test_wilson_interval_matches_hand_computation() -> None:
    # 8 of 10: p=0.8, z=1.96: centre = (0.8 + 0.19208)/1.38415 = 0.71674; half = 0.22656
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize(
    "b, c, p",
    [
        (0, 0, 1.0),
        (0, 6, 2 / 64),
        (1, 9, 2 * (1 + 10) / 1024),
        (3, 3, 1.0),
        (5, 0, 2 / 32),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
    ],
)
def test_mcnemar_exact(b, c, p) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_paired_bootstrap_interval() -> None:
    base = [1.0] * 100
    assert paired_bootstrap_ci(base, base) == (0.0, 0.0)
    new = [1.0] * 80 + [0.0] * 20  # 20 items flipped pass → fail: Δ = −0.2
    lo, hi = paired_bootstrap_ci(base, new)
    assert -0.3 < lo < -0.2 < hi < -0.1
    assert paired_bootstrap_ci(base, new) == (lo, hi)  # seeded: reproducible
