"""Command line: parse arguments, call one function per command, map errors to exit codes.

Heavy imports (pydantic, pyarrow, pandas, aiohttp) happen inside the commands so that
`evalrun --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with evalrun's error format: one line, the command's --help as the hint."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"evalrun: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from evalrun.cli_many import add_merge_parser, add_run_arguments

    p = _Parser(
        prog="evalrun",
        description="Batch evaluation of chat-completion APIs: YAML grid → rate-limited requests → Parquet.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("validate", help="check an experiment file and its dataset; sends nothing")
    s.add_argument("config", type=Path)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    s = sub.add_parser("plan", help="count cells, requests, tokens and the shortest duration; sends nothing")
    s.add_argument("config", type=Path)
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    s.add_argument("--limit", type=_positive_int, help="use only the first N dataset rows")
    s.add_argument("--json", action="store_true", help="machine-readable output")

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
    s.add_argument("--limit", type=_positive_int, help="use only the first N dataset rows")
    s.add_argument("--run-dir", type=Path, help="write the report exactly here")
    s.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run: send only what has no row")
    s.add_argument(
        "--retry-errors", action="store_true", help="with --resume: also re-send requests that ended in error"
    )
    s.add_argument("--force", action="store_true", help="with --resume: continue even if the grid changed")
    s.add_argument("--max-requests", type=_positive_int, help="stop cleanly after sending this many requests")
    s.add_argument(
        "--max-cost",
        type=_positive_float,
        metavar="AMOUNT",
        help="stop cleanly before the cost could exceed AMOUNT (the price table's currency)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress display")
    add_run_arguments(s)
    add_merge_parser(sub)

    s = sub.add_parser("score", help="(re)compute the scores of a finished run; sends nothing")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--config", type=Path, help="take the scorers from this file (default: the run's own config)")

    s = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 if a cell regressed (a CI gate)")
    s.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN_DIR", help="BASE_RUN NEW_RUN, or NEW_RUN with --baseline latest"
    )
    s.add_argument("--baseline", choices=["latest"], help="latest: the previous run of the same experiment")
    s.add_argument("--scorer", help="the scorer whose pass rate gates (default: gate.scorer, else the first)")
    s.add_argument("--fail-on-drop", type=float, metavar="X", help="regression = pass-rate drop > X (0.02 = 2 points)")
    s.add_argument("--alpha", type=float, help="…and McNemar p < alpha (default 0.05)")
    s.add_argument("--out", type=Path, help="where compare.md/.parquet go (default: the new run's directory)")
    s.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report (one test case per cell)")

    s = sub.add_parser("cost", help="cost and tokens of a finished run, broken down; sends nothing")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--by", default="model", help="report columns to group by, comma-separated (default: model)")
    s.add_argument("--prices", type=Path, metavar="FILE", help="recompute the cost with this price table")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")

    s = sub.add_parser("report", help="write a self-contained HTML report of a finished run (charts, sortable table)")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--compare", type=Path, metavar="BASE_RUN", help="add the per-cell comparison with an earlier run")
    s.add_argument("--out", type=Path, metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")

    s = sub.add_parser("summary", help="print the per-cell summary of a finished run")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--format", choices=["table", "markdown", "csv", "json"], default="table")

    s = sub.add_parser("serve-sim", help="run the simulator as a standalone server on 127.0.0.1")
    if argv and "serve-sim" in argv:  # its options import aiohttp: only when asked for
        from evalrun.sim import add_sim_arguments

        add_sim_arguments(s)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        from evalrun import __version__

        print(f"evalrun {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from evalrun.errors import ConfigError
    from evalrun.logs import setup_logging

    setup_logging(args.verbose)
    try:
        _many().localize(args)  # run directories on object storage → local copies
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"evalrun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evalrun: interrupted", file=sys.stderr)
        return 130


def cmd_validate(args: argparse.Namespace) -> int:
    from evalrun.analysis.scoring import load_scorers
    from evalrun.config.load import load_experiment
    from evalrun.run.grid import build_plan

    plan = build_plan(load_experiment(args.config, args.overrides))
    load_scorers(plan.exp.config.scorers, plan.exp.path, plan.dataset.columns, plan.exp.lines)
    print(
        f"{args.config}: ok — {len(plan.cells):,} cells × {plan.dataset.rows:,} rows × "
        f"{plan.repeats} repeats = {plan.total_requests:,} requests"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import orjson

    from evalrun.config.load import load_experiment
    from evalrun.plan import format_plan, plan_report
    from evalrun.run.grid import build_plan

    report = plan_report(build_plan(load_experiment(args.config, args.overrides), args.limit))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_plan(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from evalrun.analysis.evaluation import for_experiment
    from evalrun.cli_many import run_workers_cmd, shard_option, wants_workers
    from evalrun.run.runner import RunOptions, run

    if wants_workers(args):
        return run_workers_cmd(args)
    if (args.retry_errors or args.force) and args.resume is None:
        raise_usage("--retry-errors and --force go with --resume RUN_DIR")
    if args.resume is not None and args.run_dir is not None:
        raise_usage("--resume already names the run directory; drop --run-dir")
    opts = RunOptions(
        overrides=args.overrides,
        limit=args.limit,
        run_dir=args.run_dir,
        resume=args.resume,
        retry_errors=args.retry_errors,
        force=args.force,
        max_requests=args.max_requests,
        max_cost=args.max_cost,
        progress=not args.no_progress,
        evaluator=for_experiment,
        shard=shard_option(args),
        rate_share=args.rate_share,
    )
    outcome = run(args.config, opts)
    _print_summary(outcome.summary, f"{outcome.run_dir.name}: {outcome.status}")
    for msg in outcome.messages:
        print(f"evalrun: {msg}", file=sys.stderr)
    print(outcome.location or outcome.run_dir)
    return outcome.exit_code


def cmd_summary(args: argparse.Namespace) -> int:

    from evalrun.analysis.summary import summary_from_file
    from evalrun.errors import ConfigError
    from evalrun.run.store import RESULTS

    path = args.run_dir / RESULTS
    if not path.is_file():
        raise ConfigError(f"{args.run_dir}: no {RESULTS} there; is it a run directory?")
    summary = summary_from_file(path)
    if args.format == "table":
        _print_summary(summary, str(args.run_dir))
    elif args.format == "json":
        import orjson

        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        import pandas as pd

        frame = pd.DataFrame(summary)
        if args.format == "csv":
            print(frame.to_csv(index=False), end="")
        else:  # a GitHub-flavoured Markdown table, for pull-request comments
            head = "| " + " | ".join(frame.columns) + " |"
            rule = "|" + "|".join("---" for _ in frame.columns) + "|"
            body = [
                "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
                for row in frame.itertuples(index=False)
            ]
            print("\n".join([head, rule, *body]))
    return 0


def cmd_score(args: argparse.Namespace) -> int:

    from evalrun.analysis.evaluation import Evaluation
    from evalrun.analysis.scoring import load_scorers
    from evalrun.config.load import load_experiment
    from evalrun.run.store import DATA_PREFIX, MANIFEST, RESULTS, require_finished, rescore

    run_dir = args.run_dir
    manifest = require_finished(run_dir)
    config = args.config or Path(manifest["config_path"])
    exp = load_experiment(config, manifest.get("overrides") or [])
    import pyarrow.parquet as pq

    columns = tuple(n[len(DATA_PREFIX) :] for n in pq.read_schema(run_dir / RESULTS).names if n.startswith(DATA_PREFIX))
    scorers = load_scorers(exp.config.scorers, exp.path, columns, exp.lines)
    evaluation = Evaluation(scorers)
    rows = rescore(run_dir, evaluation)
    manifest["scorers"] = [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in exp.config.scorers]
    from evalrun.run.store import write_json

    write_json(run_dir / MANIFEST, manifest)
    _print_summary(
        evaluation.write_summary(run_dir),
        f"{run_dir.name}: rescored {rows:,} rows ({', '.join(scorers.names) or 'no scorers'})",
    )
    print(run_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from evalrun.analysis.compare import Gate, compare_runs, latest_baseline, to_markdown, write_outputs
    from evalrun.errors import ConfigError

    if args.baseline:
        if len(args.runs) != 1:
            raise ConfigError("with --baseline latest give one run: evalrun compare --baseline latest NEW_RUN")
        new = args.runs[0]
        base = latest_baseline(new)
    elif len(args.runs) == 2:
        base, new = args.runs
    else:
        raise ConfigError("evalrun compare BASE_RUN NEW_RUN (or --baseline latest NEW_RUN)")
    for name, value, lo, hi in (("--fail-on-drop", args.fail_on_drop, 0, 1), ("--alpha", args.alpha, 0, 1)):
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    gate_cfg = _gate_from_manifest(new)
    gate = Gate(
        scorer=args.scorer or gate_cfg.get("scorer"),
        fail_on_drop=args.fail_on_drop if args.fail_on_drop is not None else gate_cfg.get("fail_on_drop", 0.02),
        alpha=args.alpha if args.alpha is not None else gate_cfg.get("alpha", 0.05),
    )
    result = compare_runs(base, new, gate)
    out = args.out or new
    write_outputs(result, out, args.junit)
    print(to_markdown(result, flips=False), end="")
    print(
        f"evalrun: wrote {out / 'compare.md'}, compare.parquet, compare_flips.parquet"
        + (f", {args.junit}" if args.junit else ""),
        file=sys.stderr,
    )
    return 1 if len(result.regressed) else 0


def _gate_from_manifest(run_dir: Path) -> dict:
    import orjson

    from evalrun.run.store import MANIFEST

    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    return (orjson.loads(path.read_bytes()).get("config") or {}).get("gate") or {}


def cmd_cost(args: argparse.Namespace) -> int:
    import orjson
    import pandas as pd

    from evalrun.analysis.summary import cost_breakdown
    from evalrun.config.prices import load_pricing
    from evalrun.errors import ConfigError
    from evalrun.run.store import MANIFEST, RESULTS

    path = args.run_dir / RESULTS
    if not path.is_file():
        raise ConfigError(f"{args.run_dir}: no {RESULTS} there; is it a run directory?")
    pricing = load_pricing(str(args.prices.resolve()), args.prices) if args.prices else None
    table = cost_breakdown(pd.read_parquet(path), [c.strip() for c in args.by.split(",") if c.strip()], pricing)
    manifest = orjson.loads((args.run_dir / MANIFEST).read_bytes()) if (args.run_dir / MANIFEST).is_file() else {}
    currency = pricing.currency if pricing else ((manifest.get("prices") or {}).get("currency") or "")
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(
            title=f"{args.run_dir.name}: cost in {currency or '(no prices)'}"
            + (f" at {args.prices}" if args.prices else "")
        )
        for c in table.columns:
            t.add_column(c, justify="left" if table[c].dtype == object else "right")
        for r in table.to_dict("records"):
            t.add_row(*(_cost_cell(k, v) for k, v in r.items()))
        Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def _cost_cell(column: str, value: object) -> str:
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column.startswith("cost"):
        return f"{value:.6f}"
    if column == "reasoning_share":
        return f"{value:.0%}"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):,}"
    return str(value)


def cmd_report(args: argparse.Namespace) -> int:
    from evalrun.report.html import write_report

    print(write_report(args.run_dir, args.compare, args.out))
    return 0


def cmd_serve_sim(args: argparse.Namespace) -> int:
    from evalrun.sim import options_from_args, serve_forever

    serve_forever(options_from_args(args), port=args.port)
    return 0


def _print_summary(summary: object, title: str) -> None:
    if summary is None:
        return
    from rich.console import Console

    from evalrun.analysis.summary import render_table

    # off a terminal rich assumes 80 columns; a report table wants its full width
    width = None if sys.stdout.isatty() else 200
    Console(soft_wrap=False, width=width).print(render_table(summary, title))  # type: ignore[arg-type]


def raise_usage(message: str) -> None:
    from evalrun.errors import ConfigError

    raise ConfigError(message)


COMMANDS = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "run": cmd_run,
    "summary": cmd_summary,
    "score": cmd_score,
    "cost": cmd_cost,
    "report": cmd_report,
    "compare": cmd_compare,
    "serve-sim": cmd_serve_sim,
    "merge": lambda args: _many().cmd_merge(args),
}


def _many() -> Any:  # the many-process commands, imported only when used
    import evalrun.cli_many

    return evalrun.cli_many
