"""`evalrun ci`: the whole PR flow, as a CI job would run it, against real git and real storage.

A bare git repository with two branches: main's job records runs (the first says "no baseline
yet" and exits 0; the next reuses every answer and passes), a feature branch that breaks one
prompt is run from a fresh shallow clone (no origin/main in it) — its baseline is main's latest
run found by what `ci` recorded, the unchanged prompt's answers are reused, not sent, and the
broken one regresses: exit 1, JUnit failures, the PR comment with its marker, the step summary.
The same on a moto S3 reports_dir. Bad input: one line, exit 2, nothing sent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import yaml
from conftest import arithmetic_rows
from many import S3Server, s3_server

from evalrun.cli_ci import BRANCH_VARS, COMMIT_VARS, MARKER

__all__ = ["s3_server"]  # the fixture, imported for pytest

GIT = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "-c", "init.defaultBranch=main"]


def _config(reports_dir: str) -> dict[str, Any]:
    return {
        "experiment": "pr",
        "provider": "sim",
        "providers": {"sim": {"kind": "simulator", "simulator": {"latency_scale": 0}}},
        "models": ["gemini-2.5-flash-lite", "gemini-3.1-pro-preview"],
        "params": {"max_tokens": 2048, "reasoning_effort": "low"},
        "prompts": {
            "plain": [{"role": "user", "content": "What is {question}? Only the number."}],
            "terse": [{"role": "user", "content": "{question} = ? Only the number."}],
        },
        "dataset": {"path": "rows.jsonl"},
        "scorers": [{"name": "correct", "type": "numeric", "expected": "{answer}"}],
        "reports_dir": reports_dir,
    }


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _repo(tmp: Path, reports_dir: str) -> tuple[Path, Path]:
    """(the bare origin, a full clone on main holding the experiment)."""
    origin, work = tmp / "origin.git", tmp / "work"
    _git(tmp, "init", "-q", "--bare", str(origin))
    _git(tmp, "clone", "-q", str(origin), str(work))
    (work / "exp.yaml").write_text(yaml.safe_dump(_config(reports_dir), sort_keys=False))
    arithmetic_rows(work / "rows.jsonl", 40)
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "the experiment")
    _git(work, "push", "-q", "origin", "HEAD:main")
    return origin, work


def _feature_clone(tmp: Path, origin: Path, work: Path) -> Path:
    """The PR: break the terse prompt on a branch, pushed; checked out as CI does (shallow)."""
    _git(work, "checkout", "-q", "-b", "feature")
    cfg = yaml.safe_load((work / "exp.yaml").read_text())
    cfg["prompts"]["terse"] = [{"role": "user", "content": "Reply with only a number."}]  # the question is gone
    (work / "exp.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _git(work, "commit", "-qam", "a shorter prompt")
    _git(work, "push", "-q", "origin", "feature")
    pr = tmp / "pr"
    _git(tmp, "clone", "-q", "--depth", "1", "--branch", "feature", f"file://{origin}", str(pr))
    assert subprocess.run(["git", "rev-parse", "origin/main"], cwd=pr, capture_output=True).returncode != 0
    return pr


def _ci(cli: Any, config: Path, *args: str) -> Any:
    return cli("ci", config, "--no-progress", *args)


def _run_dir(result: Any) -> Path:
    """The run directory `ci` names in its last words on stderr."""
    line = next(x for x in reversed(result.err.splitlines()) if "pr-comment.md" in x)
    return Path(line.split("wrote ", 1)[1].split(" and ")[0]).parent


@pytest.fixture(autouse=True)
def _not_on_github(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*BRANCH_VARS, *COMMIT_VARS, "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


def test_main_records_a_feature_branch_reuses_and_the_gate_fails(tmp_path, cli, monkeypatch) -> None:
    reports = tmp_path / "reports"  # shared between the jobs, as an artifact store or a bucket would be
    origin, work = _repo(tmp_path, str(reports))
    first = _ci(cli, work / "exp.yaml")
    assert first.code == 0 and "no baseline yet: first run recorded" in first.err
    run1 = _run_dir(first)
    ci1 = orjson.loads((run1 / "ci.json").read_bytes())
    assert ci1["branch"] == "main" and ci1["commit"] == _git(work, "rev-parse", "HEAD") and ci1["baseline"] is None
    assert (run1 / "pr-comment.md").read_text().startswith(MARKER.format(experiment="pr"))

    nightly = _ci(cli, work / "exp.yaml")  # the next night on main: nothing changed
    assert nightly.code == 0 and "PASS" in nightly.out
    run2 = _run_dir(nightly)
    assert orjson.loads((run2 / "ci.json").read_bytes())["baseline"] == run1.name
    assert pd.read_parquet(run2 / "results.parquet").cached.all()  # every answer reused, none sent

    pr = _feature_clone(tmp_path, origin, work)
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "junit.xml"
    broken = _ci(cli, pr / "exp.yaml", "--junit", str(junit))
    assert broken.code == 1, broken.err
    run3 = _run_dir(broken)
    ci3 = orjson.loads((run3 / "ci.json").read_bytes())
    assert ci3["branch"] == "feature" and ci3["baseline"] == run2.name  # main's latest, found without git history
    rows = pd.read_parquet(run3 / "results.parquet")
    assert rows[rows.prompt_id == "plain"].cached.all() and not rows[rows.prompt_id == "terse"].cached.any()
    verdicts = pd.read_parquet(run3 / "compare.parquet").set_index("cell").verdict
    assert sorted(v for c, v in verdicts.items() if "terse" in c) == ["regressed", "regressed"]
    assert all(v == "no change" for c, v in verdicts.items() if "plain" in c)
    assert junit.read_text().count("<failure") == 2
    comment = (run3 / "pr-comment.md").read_text()
    assert comment.startswith(MARKER.format(experiment="pr")) and "FAIL" in comment
    assert "80 of 160 answers were reused" in comment
    assert summary.read_text() == comment + "\n"

    again = _ci(cli, pr / "exp.yaml")  # a feature run is never a baseline: still main's
    assert again.code == 1
    assert orjson.loads((_run_dir(again) / "ci.json").read_bytes())["baseline"] == run2.name


def test_on_object_storage_the_baseline_is_found_and_reused_from_the_bucket(tmp_path, cli, s3_server: S3Server) -> None:
    origin, work = _repo(tmp_path, "s3://evals/ci")
    assert _ci(cli, work / "exp.yaml").code == 0
    pr = _feature_clone(tmp_path, origin, work)
    broken = _ci(cli, pr / "exp.yaml")
    assert broken.code == 1, broken.err
    assert "80 answers came from the cache, unsent" in broken.err
    objects = s3_server.objects("evals")
    recorded = {k.split("/")[-2]: orjson.loads(v) for k, v in objects.items() if k.endswith("/ci.json")}
    assert sorted(r["branch"] for r in recorded.values()) == ["feature", "main"]
    main_run = next(run for run, r in recorded.items() if r["branch"] == "main")
    assert [r["baseline"] for r in recorded.values() if r["branch"] == "feature"] == [main_run]


def test_a_baseline_given_as_a_path_is_used(tmp_path, cli) -> None:
    _, work = _repo(tmp_path, str(tmp_path / "reports"))
    base = _run_dir(_ci(cli, work / "exp.yaml"))
    elsewhere = tmp_path / "artifact"
    elsewhere.mkdir()
    for name in ("manifest.json", "journal.jsonl", "results.parquet"):
        (elsewhere / name).write_bytes((base / name).read_bytes())
    result = _ci(cli, work / "exp.yaml", "--baseline", str(elsewhere))
    assert result.code == 0 and "PASS" in result.out
    assert orjson.loads((_run_dir(result) / "ci.json").read_bytes())["baseline"] == base.name  # its run id


def test_bad_input_is_one_line_and_sends_nothing(tmp_path, cli) -> None:
    _, work = _repo(tmp_path, str(tmp_path / "reports"))
    missing = _ci(cli, work / "exp.yaml", "--baseline", str(tmp_path / "nowhere"))
    assert missing.code == 2 and "--baseline" in missing.err and "Traceback" not in missing.err
    cfg = yaml.safe_load((work / "exp.yaml").read_text())
    cfg["params"]["temprature"] = 1.0
    (work / "bad.yaml").write_text(yaml.safe_dump(cfg))
    bad = _ci(cli, work / "bad.yaml")
    assert bad.code == 2 and "temprature" in bad.err and "Traceback" not in bad.err
    assert not (tmp_path / "reports").exists()  # nothing ran, nothing was sent


def test_outside_git_runs_that_know_no_branch_are_each_others_baselines(tmp_path, cli) -> None:
    work = tmp_path / "plain"  # not a git checkout, no CI variable
    work.mkdir()
    _, repo = _repo(tmp_path, str(tmp_path / "reports"))
    for name in ("exp.yaml", "rows.jsonl"):
        (work / name).write_bytes((repo / name).read_bytes())
    first = _ci(cli, work / "exp.yaml")
    assert first.code == 0 and "no branch known" in first.err and "no baseline yet" in first.err
    second = _ci(cli, work / "exp.yaml")
    assert second.code == 0 and "PASS" in second.out
    assert orjson.loads((_run_dir(second) / "ci.json").read_bytes())["baseline"] == _run_dir(first).name


def test_the_branch_comes_from_the_ci_system_or_the_flag(tmp_path, cli, monkeypatch) -> None:
    _, work = _repo(tmp_path, str(tmp_path / "reports"))
    monkeypatch.setenv("CI_COMMIT_REF_NAME", "release")  # GitLab CI
    monkeypatch.setenv("CI_COMMIT_SHA", "abc123")
    r = _ci(cli, work / "exp.yaml")
    assert orjson.loads((_run_dir(r) / "ci.json").read_bytes())[("branch")] == "release"
    r = _ci(cli, work / "exp.yaml", "--branch", "topic", "--base-branch", "release")
    ci = orjson.loads((_run_dir(r) / "ci.json").read_bytes())
    assert ci["branch"] == "topic" and ci["commit"] == "abc123" and ci["baseline"] is not None
