"""The command line's grammar: every command, flag and help text of `evalrun`, with argparse
errors in evalrun's one-line format. `cli.py` dispatches what this parses."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a whole number ≥ 1 (int) or a number > 0 (float), in evalrun's words."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' * (kind is int)}number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be {'at least 1' if kind is int else 'more than 0'}, got {text}")
        return value

    return parse


def _no_cache(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--no-cache", action="store_true", help="leave the experiment's cache: alone (neither asked nor filled)"
    )


def _count(text: str) -> int:
    """An argparse type: a whole number ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with evalrun's error format: one line, the command's --help as the hint."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"evalrun: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = _Parser(
        prog="evalrun",
        description="Batch evaluation of chat-completion APIs: YAML grid → rate-limited requests → Parquet.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # the order of the calls is the order of the commands in --help
    _add_config_commands(sub)
    _add_run_commands(sub)
    _add_score_command(sub)
    _add_compare_command(sub)
    _add_ci_command(sub)
    _add_reading_commands(sub)
    _add_setup_commands(sub, argv)
    return p


def _set_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")


def _add_config_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """validate and plan: read an experiment file, send nothing."""
    s = sub.add_parser("validate", help="check an experiment file and its dataset; sends nothing")
    s.add_argument("config", type=Path)
    _set_option(s)
    _no_cache(s)

    s = sub.add_parser("plan", help="count cells, requests, tokens and the shortest duration; sends nothing")
    s.add_argument("config", type=Path)
    _set_option(s)
    s.add_argument("--limit", type=_positive(int), help="use only the first N dataset rows")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--detect",
        type=float,
        metavar="D",
        help="also: the rows × repeats the gate needs to see a drop of D (0.05 = 5 points), from a baseline run",
    )
    s.add_argument(
        "--baseline", metavar="RUN_DIR", help="with --detect: the run to measure noise from (default: latest)"
    )
    s.add_argument("--power", type=float, default=0.8, help="with --detect: the power wanted (default 0.8)")
    _no_cache(s)


def _add_run_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """run (with its scale-out flags) and merge."""
    from evalrun.cli_many import add_merge_parser, add_run_arguments

    s = sub.add_parser("run", help="run an experiment (or resume one) and write its report")
    s.add_argument("config", type=Path, nargs="?", help="experiment YAML (optional with --resume)")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set params.temperature=0.2 (repeatable)",
    )
    s.add_argument("--limit", type=_positive(int), help="use only the first N dataset rows")
    s.add_argument("--run-dir", type=Path, help="write the report exactly here")
    s.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run: send only what has no row")
    s.add_argument("--reuse", metavar="RUN_DIR", help="take unchanged requests' answers from a run (or latest)")
    s.add_argument(
        "--retry-errors", action="store_true", help="with --resume: also re-send requests that ended in error"
    )
    s.add_argument("--force", action="store_true", help="with --resume: continue even if the grid changed")
    s.add_argument("--max-requests", type=_count, help="stop cleanly after sending this many requests (0: send none)")
    s.add_argument(
        "--max-cost",
        type=_positive(float),
        metavar="AMOUNT",
        help="stop cleanly before the cost, judges included, would exceed AMOUNT (the price table's currency)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress display")
    s.add_argument(
        "--stop-when-decided",
        metavar="BASELINE",
        help="stop sending to a cell once an always-valid test has settled its verdict against BASELINE "
        "(a run directory, or latest)",
    )
    _no_cache(s)
    add_run_arguments(s)
    add_merge_parser(sub)


def _add_score_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = sub.add_parser("score", help="(re)compute the scores of a finished run; sends nothing")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--config", type=Path, help="take the scorers from this file (default: the run's own config)")


def _add_compare_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """compare: the CI gate's flags."""
    s = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 if a cell regressed (a CI gate)")
    s.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN_DIR", help="BASE_RUN NEW_RUN, or NEW_RUN with --baseline latest"
    )
    s.add_argument(
        "--baseline",
        choices=["latest"],
        help="latest: the latest completed run of the same experiment with the same grid",
    )
    s.add_argument("--scorer", help="the scorer whose pass rate gates (default: gate.scorer, else the first)")
    s.add_argument("--fail-on-drop", type=float, metavar="X", help="regression = pass-rate drop > X (0.02 = 2 points)")
    s.add_argument("--alpha", type=float, help="…and the paired test on rows gives p < alpha (default 0.05)")
    s.add_argument(
        "--min-passes",
        type=int,
        metavar="K",
        help="a row passes when K of its answers (repeats × choices) pass (default: gate.min_passes, else "
        "the row's pass fraction)",
    )
    s.add_argument("--out", type=Path, help="where compare.md/.parquet go (default: the new run's directory)")
    s.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report (one test case per cell)")
    s.add_argument(
        "--strict",
        action="store_true",
        help="also fail (exit 1) when the baseline's provider, dataset, parameters or cells differ",
    )


def _add_ci_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """ci: run + reuse + gate + the texts a CI job posts, in one command."""
    s = sub.add_parser(
        "ci", help="for a PR or nightly job: find the baseline, run reusing it, gate; exit 1 if a cell regressed"
    )
    s.add_argument("config", type=Path, help="experiment YAML")
    _set_option(s)
    s.add_argument(
        "--baseline",
        metavar="RUN",
        help="the baseline run (a directory or URL, e.g. an artifact); default: the latest completed run "
        "that evalrun ci recorded on --base-branch in reports_dir",
    )
    s.add_argument("--base-branch", default="main", help="the branch whose runs are baselines (default: main)")
    s.add_argument("--branch", help="this run's branch (default: the CI system's variable, else the git checkout's)")
    s.add_argument("--limit", type=_positive(int), help="use only the first N dataset rows")
    s.add_argument(
        "--max-cost", type=_positive(float), metavar="AMOUNT", help="stop cleanly before the run's cost exceeds AMOUNT"
    )
    s.add_argument("--scorer", help="the scorer whose pass rate gates (default: gate.scorer, else the first)")
    s.add_argument("--fail-on-drop", type=float, metavar="X", help="regression = pass-rate drop > X (0.02 = 2 points)")
    s.add_argument("--alpha", type=float, help="…and the paired test on rows gives p < alpha (default 0.05)")
    s.add_argument(
        "--strict", action="store_true", help="also fail when the baseline's provider, dataset or cells differ"
    )
    s.add_argument("--out", type=Path, help="where compare.md, pr-comment.md … go (default: the new run's directory)")
    s.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report (one test case per cell)")
    s.add_argument(
        "--comment", type=Path, metavar="FILE", help="the PR-comment body (default: OUT/pr-comment.md; marker first)"
    )
    s.add_argument(
        "--stop-when-decided",
        action="store_true",
        help="stop sending to a cell once an always-valid test has settled its verdict against the baseline",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress display")


def _add_reading_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """cost, report and summary: read a finished run, send nothing."""
    s = sub.add_parser("cost", help="cost and tokens of a finished run, broken down; sends nothing")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--by", default="model", help="report columns to group by, comma-separated (default: model)")
    s.add_argument("--prices", type=Path, metavar="FILE", help="recompute the cost with this price table")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")

    s = sub.add_parser("report", help="write a self-contained HTML report of a finished run (charts, sortable table)")
    s.add_argument("run_dir", type=Path)
    s.add_argument(
        "--compare",
        type=Path,
        metavar="BASE_RUN",
        help="add the per-cell comparison with an earlier run (latest: the latest completed run of the same experiment)",
    )
    s.add_argument("--out", type=Path, metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")

    s = sub.add_parser("summary", help="print the per-cell summary of a finished run")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--format", choices=["table", "markdown", "csv", "json"], default="table")
    _add_history_command(sub)


def _add_history_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = sub.add_parser(
        "history", help="trends of many runs per cell and scorer, significant steps and drift; sends nothing"
    )
    s.add_argument(
        "source", metavar="RUN_DIR_GLOB|EXPERIMENT_DIR", help="a glob of run folders or an experiment's folder"
    )
    s.add_argument(
        "--last", type=_positive(int), default=30, metavar="N", help="the last N completed runs (default 30)"
    )
    s.add_argument("--out", type=Path, metavar="FILE", help="also write FILE: .html, .md, .json or .csv")
    s.add_argument("--alpha", type=float, default=0.05, help="a step is flagged when its adjusted p < alpha (0.05)")
    s.add_argument("--alert", action="store_true", help="exit 1 when a step is flagged (a nightly job's alarm)")
    s.add_argument(
        "--check-models",
        action="store_true",
        help="ask each provider (GET /models) whether it still lists the last run's models; sends no chat",
    )


def _add_setup_commands(sub: argparse._SubParsersAction[_Parser], argv: list[str] | None) -> None:
    """models, init and serve-sim: around an experiment rather than in one."""
    s = sub.add_parser("models", help="list the models a provider's server serves (GET /v1/models); sends no chat")
    s.add_argument("provider", metavar="PROVIDER", help="a preset (evolink, simulator) or a provider of --config")
    s.add_argument("--config", type=Path, help="the experiment file that defines PROVIDER")
    _set_option(s)

    s = sub.add_parser("init", help="write a quickstart experiment (config, prices, dataset) into DIR")
    s.add_argument("dir", type=Path, nargs="?", default=Path("."), metavar="DIR", help="default: here")
    s.add_argument("--force", action="store_true", help="overwrite files that exist")

    s = sub.add_parser("serve-sim", help="run the simulator as a standalone server on 127.0.0.1")
    if argv and "serve-sim" in argv:  # its options import aiohttp: only when asked for
        from evalrun.sim import add_sim_arguments

        add_sim_arguments(s)
