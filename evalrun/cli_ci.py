"""The commands of CI and nightly jobs: `evalrun ci CONFIG` (below) and `evalrun history`.

`evalrun ci CONFIG`: one command for a pull-request job, or a nightly one on the main branch.

What a CI recipe built from `run` and `compare` got wrong in real use: on a shallow PR checkout
there is no `origin/main` to run a baseline from; running the base config again paid twice;
on the first night there is no baseline and compare's exit 2 read as a regression; the report
was lost exactly when the gate failed. So this command:

1. finds the baseline itself: `--baseline PATH|URL` (e.g. an artifact), or the latest completed
   whole run of the same experiment in `reports_dir` (local or s3://) that `evalrun ci` recorded
   on the base branch (`ci.json` in each run it makes says branch and commit);
2. runs the config with `--reuse` of the baseline: unchanged requests are taken, not sent;
3. gates with the repeat-aware test (`gate:` settings), within `--max-cost`;
4. writes compare.md/.json/.parquet, JUnit, a PR-comment body whose first line is a stable
   marker (a bot finds and updates one comment), and `$GITHUB_STEP_SUMMARY` when set;
5. exits 1 when a cell regressed (or the run did not complete), 0 when nothing regressed or when
   there was no baseline yet (said: the run is recorded as the first one), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.errors import ConfigError

if TYPE_CHECKING:
    from evalrun.analysis.compare import Comparison

CI_FILE = "ci.json"
BASELINE_FILES = ("manifest.json", "journal.jsonl", "results.parquet")  # what reuse and compare read
MARKER = "<!-- evalrun-ci: {experiment} -->"
COMMENT_LIMIT = 60_000  # GitHub refuses comments over 65,536 characters


@dataclass(frozen=True)
class Place:
    """Where the code under test came from: the branch (None: a detached checkout) and commit."""

    branch: str | None
    commit: str | None


# where CI systems say the branch (a pull request's source branch first) and the commit
BRANCH_VARS = (
    "EVALRUN_BRANCH",
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
    "CI_COMMIT_REF_NAME",
)
COMMIT_VARS = ("GITHUB_SHA", "CI_COMMIT_SHA")


def git_place(config: Path, branch: str | None = None) -> Place:
    """`--branch`, else what the CI system says (GitHub Actions, GitLab CI, or EVALRUN_BRANCH),
    else the git checkout the config is in; else nothing (not a failure: the run is recorded,
    and runs that know no branch are each other's baselines)."""
    env = os.environ
    branch = branch or next((env[v] for v in BRANCH_VARS if env.get(v)), None)
    commit = next((env[v] for v in COMMIT_VARS if env.get(v)), None)
    if branch and commit:
        return Place(branch, commit)
    where = config.resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    found = git("rev-parse", "--abbrev-ref", "HEAD")
    return Place(branch or (None if found in (None, "HEAD") else found), commit or git("rev-parse", "HEAD"))


def cmd_ci(args: argparse.Namespace) -> int:
    from evalrun.config.load import load_experiment

    exp = load_experiment(args.config, args.overrides)  # a bad config: one line, exit 2, nothing sent
    place = git_place(args.config, args.branch)
    if place.branch is None:
        print(
            "evalrun: ci: no branch known (not a git checkout, no CI variable; --branch NAME sets it): "
            "runs that know no branch are each other's baselines",
            file=sys.stderr,
        )
    wanted = args.base_branch if place.branch is not None else None
    base = _baseline(args.baseline, str(exp.config.reports_dir), exp.name, wanted)
    outcome = _run(args, base)
    _record(outcome.run_dir, outcome.location, place, args.base_branch, base)
    out = args.out or outcome.run_dir
    title = f"evalrun ci · {exp.name}"
    if outcome.exit_code != 0:
        text = f"**FAIL**: the run did not complete ({outcome.status}); nothing was gated. Run: `{_shown(outcome)}`"
        _write_texts(out, exp.name, title, text, args.comment)
        print(f"evalrun: ci: the run ended {outcome.status}: no verdict", file=sys.stderr)
        return outcome.exit_code
    if base is None:
        text = (
            f"No baseline yet: this run is recorded as the first one of `{exp.name}`"
            f" on branch `{place.branch or 'unknown'}`. Run: `{_shown(outcome)}`"
        )
        _write_texts(out, exp.name, title, text, args.comment)
        print(f"evalrun: ci: no baseline yet: first run recorded: {_shown(outcome)}", file=sys.stderr)
        return 0
    result = _gate(args, base, outcome.run_dir, out)
    _write_texts(out, exp.name, title, _comment_body(result, outcome.run_dir), args.comment)
    return 1 if result.failed else 0


def _run(args: argparse.Namespace, base: Path | None) -> Any:
    from evalrun.analysis.evaluation import for_experiment
    from evalrun.analysis.sequential import decider_for
    from evalrun.analysis.views import print_summary
    from evalrun.plan import preflight
    from evalrun.run.runner import RunOptions, run

    notes: list[str] = []
    opts = RunOptions(
        overrides=args.overrides,
        limit=args.limit,
        max_cost=args.max_cost,
        progress=not args.no_progress,
        reuse=None if base is None else str(base),
        evaluator=preflight(for_experiment, args.max_cost, notes.append),
        decider=decider_for(str(base)) if args.stop_when_decided and base is not None else None,
    )
    outcome = run(args.config, opts)
    print_summary(outcome.summary, f"{outcome.run_dir.name}: {outcome.status}")
    for msg in [*notes, *outcome.messages]:
        print(f"evalrun: {msg}", file=sys.stderr)
    return outcome


def _gate(args: argparse.Namespace, base: Path, new: Path, out: Path) -> Comparison:
    from evalrun.analysis.compare import compare_runs, gate_for
    from evalrun.analysis.compare_text import to_markdown, write_outputs

    result = compare_runs(base, new, gate_for(new, args.scorer, args.fail_on_drop, args.alpha, args.strict))
    write_outputs(result, out, args.junit)
    print(to_markdown(result, flips=False), end="")
    for warning in result.warnings:
        print(f"evalrun: warning: {warning}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- the baseline


def _baseline(given: str | None, reports_dir: str, experiment: str, branch: str | None) -> Path | None:
    """A local copy (manifest, journal, results) of the baseline run, or None when there is none yet."""
    from evalrun.run.store import storage

    if given is not None:
        if storage.is_url(given):
            return storage.fetch_run(storage.as_location(given), BASELINE_FILES)
        path = Path(given)
        if not (path / "results.parquet").is_file() or not (path / "journal.jsonl").is_file():
            raise ConfigError(
                f"--baseline {given}: not a finished run directory (needs results.parquet and journal.jsonl)"
            )
        return path
    if not storage.is_url(reports_dir):
        return _latest((Path(reports_dir) / experiment).glob("*"), experiment, branch)
    copies = {}  # local copy (manifest, ci.json) → its URL
    for url in storage.list_runs(storage.join(reports_dir, experiment)):
        try:
            copies[storage.fetch_run(url, ("manifest.json", CI_FILE))] = url
        except ConfigError:
            continue  # not a run directory
    best = _latest(copies, experiment, branch)
    return None if best is None else storage.fetch_run(copies[best], BASELINE_FILES)


def _latest(run_dirs: Iterable[Path], experiment: str, branch: str | None) -> Path | None:
    """The latest completed whole run of `experiment` that ci recorded (a ci.json) on `branch`
    (None: that knew no branch)."""
    from evalrun.run.manifest import RunStatus
    from evalrun.run.store import manifest_if_any

    best: tuple[str, Path] | None = None
    for run_dir in run_dirs:
        try:
            ci = orjson.loads((run_dir / CI_FILE).read_bytes())
            m = manifest_if_any(run_dir)
        except (OSError, orjson.JSONDecodeError, ConfigError):
            continue  # not recorded by ci, or damaged: no baseline
        if not isinstance(ci, dict) or ci.get("branch") != branch:
            continue
        if m.experiment != experiment or m.shard is not None or m.status is not RunStatus.COMPLETED:
            continue
        started = m.started_at or ""
        if best is None or started > best[0]:
            best = (started, run_dir)
    return None if best is None else best[1]


def _record(run_dir: Path, location: str | None, place: Place, base_branch: str, base: Path | None) -> None:
    """ci.json beside the run (and published with it): the next job finds its baseline by it."""
    from evalrun.run.store import manifest_if_any, storage

    baseline = None if base is None else manifest_if_any(base).run_id
    body = {**asdict(place), "base_branch": base_branch, "baseline": baseline}  # its run id, wherever it was
    path = run_dir / CI_FILE
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    if location is not None:
        storage.publish_file(path, location)


# --------------------------------------------------------------------------- what it writes


def _comment_body(result: Comparison, new: Path) -> str:
    from evalrun.analysis.compare_text import to_markdown

    text = to_markdown(result, flips=True)
    try:
        import pyarrow.parquet as pq

        cached = pq.read_table(new / "results.parquet", columns=["cached"]).column("cached").to_pylist()
        reused = sum(1 for c in cached if c)
        text += f"\n{reused:,} of {len(cached):,} answers were reused from the baseline (not sent again).\n"
    except (OSError, KeyError):
        pass
    return text


def _write_texts(out: Path, experiment: str, title: str, text: str, comment: Path | None) -> None:
    """The PR-comment body (marker first) and, on GitHub Actions, the job's step summary."""
    out.mkdir(parents=True, exist_ok=True)
    body = f"{MARKER.format(experiment=experiment)}\n### {title}\n\n{text}"
    if len(body) > COMMENT_LIMIT:
        body = body[:COMMENT_LIMIT] + "\n\n…cut here; the whole comparison is in compare.md.\n"
    path = comment or out / "pr-comment.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(body + "\n")
    print(f"evalrun: ci: wrote {path}" + (f" and {summary}" if summary else ""), file=sys.stderr)


def _shown(outcome: Any) -> str:
    return str(outcome.location or outcome.run_dir)


def cmd_history(args: argparse.Namespace) -> int:
    from evalrun.analysis.history import build_history
    from evalrun.analysis.history_text import terminal_table
    from evalrun.analysis.views import console
    from evalrun.report.history_html import check_out, write_history

    check_out(args.out, args.alpha)  # a bad --out or --alpha: refused before anything is read
    history = build_history(args.source, args.last, args.alpha)
    for line in history.skipped:
        print(f"evalrun: skipped {line}", file=sys.stderr)
    if args.check_models:
        from dataclasses import replace

        from evalrun.analysis.history_models import model_list_drift

        gone, notes = model_list_drift(history)
        history = replace(history, drift=(*history.drift, *gone))
        for note in notes:
            print(f"evalrun: {note}", file=sys.stderr)
    out = console()
    out.print(terminal_table(history, out.width))
    if args.out is not None:
        print(f"evalrun: wrote {write_history(history, args.out)}", file=sys.stderr)
    return 1 if args.alert and history.flagged else 0
