"""`--stop-when-decided`: stop sending to a cell once an always-valid test has settled it.

The statistics on the simulator's own correctness model (the outcome tables a simulator run
would score, drawn in process — tests/test_gate_repeats.py checks they are what its HTTP runs
serve): with no change the false alarms stay within alpha although the test is looked at after
every row, and a clear regression is decided on a fraction of the rows. Then the whole path
over real HTTP: the settled cells' requests are not sent, the run is complete, the manifest
and compare say what was decided, `ci` does the same, and what cannot be decided early is
refused in one line.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import yaml
from conftest import arithmetic_rows, base_config, write_config
from test_gate_repeats import _drawn

from evalrun.analysis.compare import Gate, verdict
from evalrun.analysis.rowstats import paired_row_test
from evalrun.analysis.sequential import NOT_REGRESSED, REGRESSED, Sequential

ALPHA, F = 0.05, 0.02
GATE = Gate(None, F, ALPHA)


def _fractions(rows: int, seed: int, temperature: float, repeats: int) -> pd.Series:
    return _drawn(rows, seed, temperature, range(repeats)).groupby("row_id", sort=False).passed.mean()


def _gate_with_early_stop(rows: int, k: int, temperature: float, repeats: int) -> tuple[bool, int]:
    """(flagged, rows used): rows in order into the sequential test; a cell never settled gets
    the gate's fixed test on all its rows, as compare gives it."""
    base = _fractions(rows, 2 * k, 1.0, repeats)
    new = _fractions(rows, 2 * k + 1, temperature, repeats).reindex(base.index)
    test = Sequential(F, ALPHA)
    for i, (b, n) in enumerate(zip(base, new, strict=True)):
        if test.add(n - b) is not None:
            return test.decided == REGRESSED, i + 1
    p, _ = paired_row_test(base.to_numpy(), new.to_numpy(), repeats == 1)
    flips = int((base != new).sum())
    return verdict(float(new.mean() - base.mean()), p, GATE, flips) == "regressed", rows


@pytest.mark.parametrize(("repeats", "pairs"), [(1, 200), (5, 60)])
def test_no_change_stays_within_alpha_though_looked_at_every_row(repeats: int, pairs: int) -> None:
    flagged = sum(_gate_with_early_stop(200, k, 1.0, repeats)[0] for k in range(pairs))
    assert flagged / pairs <= ALPHA, flagged  # measured 0.030 (repeats 1) and 0.025 (repeats 5) over 200


@pytest.mark.parametrize(("repeats", "rows"), [(1, 400), (5, 200)])
def test_a_clear_regression_is_decided_on_a_fraction_of_the_rows(repeats: int, rows: int) -> None:
    clear = 1.0 + 0.15 / 0.12  # the simulator's penalty per unit of temperature: about 15 points
    runs = [_gate_with_early_stop(rows, k, clear, repeats) for k in range(40)]
    assert sum(f for f, _ in runs) >= 0.8 * len(runs)
    saved = 1 - sum(used for _, used in runs) / (rows * len(runs))
    assert saved >= 0.30, saved


def test_the_betting_test_is_always_valid_on_pure_noise() -> None:
    # rows whose difference is +1, 0 or −1 with mean exactly −F (the null's edge): the wealth
    # ever reaching 1/alpha — at any row of 500 — must stay under alpha (Ville's inequality)
    rng = random.Random(11)
    crossed = 0
    for _ in range(400):
        test = Sequential(F, ALPHA)
        for _ in range(500):
            u = rng.random()
            d = -1.0 if u < 0.25 + F / 2 else 1.0 if u > 0.75 + F / 2 else 0.0
            if test.add(d) == REGRESSED:
                crossed += 1
                break
    assert crossed / 400 <= ALPHA


def test_a_settled_verdict_does_not_change() -> None:
    test = Sequential(F, ALPHA)
    while test.add(-1.0) is None:
        pass
    assert test.decided == REGRESSED and test.rows < 20
    assert test.add(1.0) == REGRESSED and test.rows < 20
    calm = Sequential(F, ALPHA)
    while calm.add(0.5) is None:
        pass
    assert calm.decided == NOT_REGRESSED


# --------------------------------------------------------------------------- over real HTTP


def _config(tmp: Path, rows: int, terse: str) -> Path:
    cfg = base_config(
        tmp, arithmetic_rows(tmp / "rows.jsonl", rows), models=["gemini-2.5-flash-lite", "gemini-3.1-pro-preview"]
    )
    cfg["params"] = {"max_tokens": 2048, "reasoning_effort": "low"}
    cfg["prompts"] = {
        "plain": [{"role": "user", "content": "What is {question}? Only the number."}],
        "terse": [{"role": "user", "content": terse}],
    }
    cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}]
    return write_config(tmp, cfg, f"{abs(hash(terse))}.yaml")


GOOD, BROKEN = "{question} = ? Only the number.", "Reply with only a number."


def test_a_broken_prompt_stops_early_and_the_run_is_whole(tmp_path, cli) -> None:
    base = cli("run", _config(tmp_path, 120, GOOD), "--no-progress")
    assert base.code == 0, base.err
    r = cli("run", _config(tmp_path, 120, BROKEN), "--no-progress", "--stop-when-decided", "latest")
    assert r.code == 0, r.err
    m = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert m["status"] == "completed" and m["counts"]["missing"] == 0
    decided = {c["label"]: c for c in m["decided"]["cells"].values()}
    for model in ("gemini-2.5-flash-lite", "gemini-3.1-pro-preview"):
        terse, plain = decided[f"{model} · terse"], decided[f"{model} · plain"]
        assert terse["verdict"] == REGRESSED and terse["rows"] <= 30, terse
        assert terse["answered"] < 60  # the rest of its 120 requests were not sent
        assert plain["answered"] == 120  # unchanged answers: not settled within 120 rows, all sent
    sent = (r.run_dir / "journal.jsonl").read_bytes().count(b"\n")
    assert sent == m["counts"]["recorded"] == 480 - m["decided"]["skipped"]
    assert "requests not sent" in r.err
    c = cli("compare", base.run_dir, r.run_dir)
    assert c.code == 1
    cells = pd.read_parquet(r.run_dir / "compare.parquet").set_index("cell")
    assert sorted(cells.verdict[cells.index.str.contains("terse")]) == ["regressed", "regressed"]
    assert cells.decided_after_rows[cells.index.str.contains("terse")].notna().all()
    assert "only in base" not in c.err  # rows not asked on purpose are no coverage warning


def test_ci_stops_early_against_its_baseline(tmp_path, cli, monkeypatch) -> None:
    from evalrun.cli_ci import BRANCH_VARS, COMMIT_VARS

    for name in (*BRANCH_VARS, *COMMIT_VARS, "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    good = _config(tmp_path, 80, GOOD)
    assert cli("ci", good, "--no-progress", "--branch", "main").code == 0  # main's run, recorded
    r = cli("ci", _config(tmp_path, 80, BROKEN), "--no-progress", "--branch", "fix", "--stop-when-decided")
    assert r.code == 1, r.err
    assert "regressed against the baseline after" in r.err


def test_what_cannot_be_decided_early_is_refused_in_one_line(tmp_path, cli) -> None:
    config = _config(tmp_path, 20, GOOD)
    none_yet = cli("run", config, "--no-progress", "--stop-when-decided", "latest")
    assert none_yet.code == 2 and "no completed run" in none_yet.err
    assert cli("run", config, "--no-progress").code == 0
    workers = cli("run", config, "--no-progress", "--stop-when-decided", "latest", "--workers", "2")
    assert workers.code == 2 and "--workers" in workers.err
    cfg: dict[str, Any] = yaml.safe_load(config.read_text())
    cfg["scorers"].append(
        {
            "name": "judge",
            "type": "label_model",
            "model": "gemini-2.5-flash-lite",
            "rubric": "closed_qa",
            "reference": "{answer}",
        }
    )
    cfg["gate"] = {"scorer": "judge"}
    judged = write_config(tmp_path, cfg, "judged.yaml")
    r = cli("run", judged, "--no-progress", "--stop-when-decided", "latest")
    assert r.code == 2 and "model judge" in r.err and "Traceback" not in r.err


def test_repeats_choices_and_errors_still_decide_and_leave_the_run_whole(tmp_path, cli) -> None:
    # a row is whole after its repeats, whatever each request came back with: n choices, or one
    # error row (as the baseline's results.parquet counts it)
    def config(terse: str, name: str) -> Path:
        cfg = yaml.safe_load(_config(tmp_path, 60, terse).read_text())
        cfg["repeats"] = 2
        cfg["params"]["n"] = 2
        cfg["providers"]["sim"]["simulator"].update(rate_500=0.1, status_5xx=500)
        cfg["retry"]["max_attempts"] = 1
        return write_config(tmp_path, cfg, name)

    base = cli("run", config(GOOD, "good.yaml"), "--no-progress")
    assert base.code in (0, 1), base.err  # 1 if every request of a cell failed: not with 10 %
    r = cli("run", config(BROKEN, "broken.yaml"), "--no-progress", "--stop-when-decided", str(base.run_dir))
    m = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert r.code == 0 and m["status"] == "completed" and m["counts"]["missing"] == 0, r.err
    assert m["counts"]["errors"] > 0  # errors were among the rows judged
    terse = [c for c in m["decided"]["cells"].values() if c["label"].endswith("terse")]
    assert [c["verdict"] for c in terse] == [REGRESSED, REGRESSED]
    assert all(c["answered"] < 2 * 60 for c in terse)  # 60 rows × 2 repeats, the rest not sent
