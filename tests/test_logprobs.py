"""Logprobs kept flat (records.Logprobs, run/records/logprobs.py): the results column built from the
flat lists is exactly what Arrow makes of the token objects the server sent, for every shape
the column takes (nulls, bytes that are not the token's UTF-8, missing alternatives), and the
stored forms read back to the same record."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config, read_results, write_config
from hypothesis import given, settings
from hypothesis import strategies as st

from evalrun.run.records.coerce import Notes
from evalrun.run.records.coerce import logprobs as flatten
from evalrun.run.records.logprobs import from_stored, to_arrow
from evalrun.run.records.records import Logprobs
from evalrun.run.store.store import results_schema

COLUMN = results_schema().field("logprobs").type

tokens = st.one_of(st.text(max_size=6), st.sampled_from(["", " the", "é", "\n", "\x00"]), st.none())
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-(2**40), 2**40), st.none())


@st.composite
def entry(draw: Any, with_tops: bool = True) -> dict[str, Any]:
    tok = draw(tokens)
    e: dict[str, Any] = {}
    if tok is not None or draw(st.booleans()):
        e["token"] = tok
    if draw(st.integers(0, 5)):  # mostly present
        e["logprob"] = draw(numbers)
    how = draw(st.sampled_from(["utf8", "utf8", "utf8", "other", "null", "missing"]))
    if how == "utf8" and isinstance(tok, str):
        e["bytes"] = list(tok.encode())
    elif how == "other":
        e["bytes"] = draw(st.lists(st.integers(0, 2**40), max_size=4))
    elif how == "null":
        e["bytes"] = None
    if with_tops:
        tops = draw(st.sampled_from(["list", "list", "null", "missing"]))
        if tops == "list":
            e["top_logprobs"] = draw(st.lists(entry(with_tops=False), max_size=4))
        elif tops == "null":
            e["top_logprobs"] = None
    return e


answers = st.lists(st.one_of(st.none(), st.lists(entry(), max_size=5)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(answers)
def test_the_column_from_flat_lists_equals_arrows_own_conversion(batch: list[list[dict[str, Any]] | None]) -> None:
    flat = [None if a is None else flatten(a, "logprobs", Notes()) for a in batch]
    assert all(f is not None for f, a in zip(flat, batch, strict=True) if a is not None)  # every shape is valid
    column = to_arrow(flat, COLUMN)
    assert column.equals(pa.array(batch, COLUMN))
    # and what custom scorers are handed is what the column holds
    assert column.to_pylist() == [None if f is None else f.objects() for f in flat]


@settings(max_examples=200, deadline=None)
@given(st.lists(entry(), max_size=5))
def test_the_stored_form_reads_back_to_the_same_record(entries: list[dict[str, Any]]) -> None:
    lp = flatten(entries, "logprobs", Notes())
    assert lp is not None
    assert from_stored(orjson.loads(orjson.dumps(lp))) == lp  # journal and cache: orjson writes the dataclass
    assert from_stored(entries) == lp  # a journal of an older evalrun: token objects


def test_usual_answers_keep_no_bytes_and_only_odd_ones_do() -> None:
    usual = flatten([{"token": " a", "logprob": -0.1, "bytes": [32, 97], "top_logprobs": []}], "lp", Notes())
    cut = flatten([{"token": "\ufffd", "logprob": -1.0, "bytes": [226], "top_logprobs": []}], "lp", Notes())
    assert usual is not None and usual.bytes is None and usual.top_bytes is None
    assert cut is not None and cut.bytes == [[226]]


def test_a_damaged_stored_form_is_not_taken_for_logprobs() -> None:
    """Lists that disagree (a hand-edited or damaged journal line) must not misalign tokens."""
    good = Logprobs(["a", "b"], [-0.1, -0.2], [1, 0], ["a"], [-0.1])
    stored = orjson.loads(orjson.dumps(good))
    for broken in (
        {**stored, "logprob": [-0.1]},
        {**stored, "n_top": [2, 0]},
        {**stored, "n_top": [-1, 2]},
        {**stored, "bytes": [[97]]},
        {**stored, "token": "ab"},
    ):
        assert type(from_stored(broken)) is not Logprobs
    assert from_stored(stored) == good


def test_alternatives_are_those_of_their_position() -> None:
    lp = Logprobs(["a", "b", "c"], [-0.1, -0.2, -0.3], [2, None, 1], ["a", "x", "y"], [-0.1, -2.0, -0.5])
    assert lp.alternatives(0) == [("a", -0.1), ("x", -2.0)]
    assert lp.alternatives(1) == []
    assert lp.alternatives(2) == [("y", -0.5)]


RUN_AND_REPORT = """
import sys
from evalrun.cli import main
code = main(["run", sys.argv[1], "--no-progress", "--run-dir", sys.argv[2]])
print("pandas imported by the run:", "pandas" in sys.modules)
import pyarrow.parquet as pq
from pathlib import Path
frame = pq.read_table(Path(sys.argv[2]) / "results.parquet").to_pandas()  # pandas still there when asked for
print("rows read with pandas:", len(frame))
sys.exit(code)
"""


def test_a_run_writes_its_results_without_importing_pandas(tmp_path: Path, dataset: Path) -> None:
    """pyarrow would import pandas (≈0.25 s, ≈40 MB) on its first list conversion; a run needs none."""
    params = {"max_tokens": 16, "logprobs": True, "top_logprobs": 3}
    config = write_config(tmp_path, base_config(tmp_path, dataset, params=params))
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    r = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, str(config), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "pandas imported by the run: False" in r.stdout
    assert "rows read with pandas: 5" in r.stdout
    df = read_results(run_dir)
    assert all(len(lp) > 0 and len(lp[0]["top_logprobs"]) == 3 for lp in df.logprobs)


SCORER = """
import math

def first_prob(row, response):
    tokens = response["logprobs"]  # the report row's shape: token objects
    first = tokens[0]
    assert first["bytes"] == list(first["token"].encode()) and first["top_logprobs"][0]["token"]
    return math.exp(first["logprob"]), True
"""


def test_custom_scorers_and_rescoring_see_the_logprobs_the_report_holds(tmp_path: Path, dataset: Path, cli) -> None:
    (tmp_path / "my_scorers.py").write_text(SCORER)
    params = {"max_tokens": 16, "logprobs": True, "top_logprobs": 3}
    custom = [{"name": "p", "type": "custom", "function": "my_scorers:first_prob"}]
    cfg = base_config(tmp_path, dataset, params=params, scorers=custom)
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    run_dir = r.run_dir

    def scores_and_logprobs() -> tuple[list[float], Any]:
        table = pq.read_table(run_dir / "results.parquet").sort_by("request_id")
        return table.column("score_p").to_pylist(), table.column("logprobs")

    scores, logprobs = scores_and_logprobs()
    assert scores == pytest.approx([math.exp(lp[0]["logprob"]) for lp in logprobs.to_pylist()])
    assert cli("score", run_dir).code == 0  # the same scorer again, from results.parquet
    again, kept = scores_and_logprobs()
    assert again == pytest.approx(scores) and kept.equals(logprobs)
    other = write_config(tmp_path, {**cfg, "scorers": [{"type": "exact_match", "expected": "{answer}"}]}, "o.yaml")
    assert cli("score", run_dir, "--config", other).code == 0  # a scorer that reads no logprobs
    table = pq.read_table(run_dir / "results.parquet").sort_by("request_id")
    assert table.column("logprobs").equals(logprobs) and "score_exact_match" in table.column_names
