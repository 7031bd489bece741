"""Command line: parse arguments, call one function per command, map errors to exit codes.
Heavy imports (pydantic, pyarrow, pandas, aiohttp) happen inside the commands: `--help` stays instant.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

from evalrun.cli_parser import EXIT_USAGE, build_parser


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
    from evalrun.run.http import StorageError

    setup_logging(args.verbose)
    try:
        _many().localize(args)  # run directories on object storage → local copies
        return COMMANDS[args.command](args)
    except (ConfigError, StorageError) as exc:  # StorageError: the disk filled up; resumable, so exit 1
        print(f"evalrun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("evalrun: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `evalrun summary RUN | head`: the reader stopped. Point stdout at devnull so the final
        # flush does not raise (and print a traceback) again; exit 1, as Python's docs and rich do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def cmd_validate(args: argparse.Namespace) -> int:
    from evalrun.analysis.evaluation import for_experiment
    from evalrun.config.load import load_experiment, model_warnings
    from evalrun.run.context import cache_file
    from evalrun.run.grid import build_plan

    plan = build_plan(load_experiment(args.config, args.overrides))
    for_experiment(plan.exp, plan.dataset.columns)  # scorers and judges, compiled as `run` does
    cache_file(plan.exp, args.no_cache)  # damaged, or its folder read-only: refused as `run` would
    print(
        f"{args.config}: ok — {len(plan.cells):,} cells × {plan.dataset.rows:,} rows × "
        f"{plan.repeats} repeats = {plan.total_requests:,} requests"
    )
    for warning in model_warnings(plan.exp):
        print(f"evalrun: warning: {warning}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import orjson

    from evalrun.config.load import load_experiment
    from evalrun.plan import format_plan, plan_report
    from evalrun.run.grid import build_plan

    exp = load_experiment(args.config, args.overrides)
    report = plan_report(build_plan(exp, args.limit), args.no_cache)
    if args.detect is not None:
        from evalrun.analysis.power import detect_for

        report["detect"] = detect_for(exp, args.detect, args.power, args.baseline)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_plan(report))
        if "detect" in report:
            from evalrun.analysis.power import format_detect

            print("\n" + format_detect(report["detect"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from evalrun.analysis.evaluation import for_experiment
    from evalrun.cli_many import run_workers_cmd, shard_option, wants_workers
    from evalrun.errors import ConfigError
    from evalrun.plan import preflight, wrapped
    from evalrun.run.runner import RunOptions, run

    if wants_workers(args):
        if args.stop_when_decided:
            raise ConfigError("--stop-when-decided goes with a whole new run: not with --workers")
        return run_workers_cmd(args)
    if (args.retry_errors or args.force) and args.resume is None:
        raise ConfigError("--retry-errors and --force go with --resume RUN_DIR")
    if args.resume is not None and args.run_dir is not None:
        raise ConfigError("--resume already names the run directory; drop --run-dir")
    notes: list[str] = []  # said after the run, beside its summary
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
        reuse=args.reuse,
        no_cache=args.no_cache,
        evaluator=preflight(for_experiment, args.max_cost, notes.append),
        shard=shard_option(args),
        rate_share=args.rate_share,
        decider=_decider(args.stop_when_decided),
    )
    outcome = run(args.config, opts)
    _print_summary(outcome.summary, f"{outcome.run_dir.name}: {outcome.status}")
    for note in notes:
        print(wrapped(f"evalrun: note: {note}", "  "), file=sys.stderr)
    for msg in outcome.messages:
        print(f"evalrun: {msg}", file=sys.stderr)
    print(outcome.location or outcome.run_dir)
    return outcome.exit_code


def _decider(baseline: str | None) -> Any:
    if baseline is None:
        return None
    from evalrun.analysis.sequential import decider_for

    return decider_for(baseline)


def cmd_summary(args: argparse.Namespace) -> int:
    from evalrun.analysis.summary import summary_from_file
    from evalrun.analysis.views import answer_notes, summary_markdown
    from evalrun.run.store import results_file

    path = results_file(args.run_dir)  # missing or damaged: one line, and how to rebuild it
    summary = summary_from_file(path)
    if args.format == "table":
        _print_summary(summary, str(args.run_dir))
    elif args.format == "json":
        import orjson

        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str).decode())
    elif args.format == "csv":
        import pandas as pd

        print(pd.DataFrame(summary).to_csv(index=False), end="")
    else:
        print(summary_markdown(summary) + "".join(f"\n> ⚠️ {line}\n" for line in answer_notes(summary)), end="")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from evalrun.analysis.evaluation import for_experiment, has_judges, rescore_run, stopped_note
    from evalrun.run.runner import RunOptions, run

    code = 0
    if has_judges(args.run_dir, args.config):  # only the judge requests not yet answered are sent
        opts = RunOptions(resume=args.run_dir, progress=False, evaluator=for_experiment, judges_only=True)
        outcome = run(args.config, opts)
        summary, title = outcome.summary, f"{args.run_dir.name}: rescored ({outcome.status})"
        code = outcome.exit_code
        for msg in outcome.messages:
            if "have no row yet" not in msg:  # said below, as what score did about it
                print(f"evalrun: {msg}", file=sys.stderr)
    else:
        summary, title = rescore_run(args.run_dir, args.config)
    _print_summary(summary, title)
    note = stopped_note(args.run_dir)
    if note:
        print(f"evalrun: {note}", file=sys.stderr)
    print(args.run_dir)
    return code or (1 if note else 0)  # 1 while the run is incomplete, as `run` says it


def cmd_compare(args: argparse.Namespace) -> int:
    from evalrun.analysis.baseline import latest_baseline
    from evalrun.analysis.compare import compare_runs, gate_for
    from evalrun.analysis.compare_text import to_markdown, write_outputs
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
    gate = gate_for(new, args.scorer, args.fail_on_drop, args.alpha, args.strict, args.min_passes)
    result = compare_runs(base, new, gate)
    out = args.out or new
    write_outputs(result, out, args.junit)
    print(to_markdown(result, flips=False), end="")
    for warning in result.warnings:
        print(f"evalrun: warning: {warning}" + (" (--strict: the gate fails)" if gate.strict else ""), file=sys.stderr)
    print(
        f"evalrun: wrote {out / 'compare.md'}, compare.parquet, compare_flips.parquet"
        + (f", {args.junit}" if args.junit else ""),
        file=sys.stderr,
    )
    return 1 if result.failed else 0


def cmd_cost(args: argparse.Namespace) -> int:
    import pandas as pd

    from evalrun.analysis.cost import cost_breakdown, judge_rows, partial_note
    from evalrun.analysis.views import cost_table, terminal_width
    from evalrun.config.prices import load_pricing
    from evalrun.run.store import manifest_if_any, results_file

    path = results_file(args.run_dir)  # missing or damaged: one line, and how to rebuild it
    pricing = load_pricing(str(args.prices.resolve()), args.prices) if args.prices else None
    by = [c.strip() for c in args.by.split(",") if c.strip()]
    # the answers themselves (logprobs above all) are most of the file and no part of a cost:
    # read as pandas objects they took 9.7 GB and 33 s for 200k requests
    import pyarrow.parquet as pq

    heavy = {"logprobs", "messages", "content", "tool_calls", "error_message", "retry_types"}
    columns = [c for c in pq.read_schema(path).names if c not in heavy or c in by]
    breakdown = cost_breakdown(pd.read_parquet(path, columns=columns), by, pricing, judge_rows(args.run_dir))
    note = partial_note(breakdown, str(args.prices) if args.prices else None)
    manifest = manifest_if_any(args.run_dir)  # optional; damaged: one line
    currency = pricing.currency if pricing else ((manifest.prices.currency if manifest.prices else None) or "")
    if args.format == "csv":
        print(breakdown.table.to_csv(index=False), end="")
    elif args.format == "json":
        print(breakdown.table.to_json(orient="records", indent=2))
    else:
        title = f"{args.run_dir.name}: cost in {currency or '(no prices)'}" + (
            f" at {args.prices}" if args.prices else ""
        )
        _console().print(cost_table(breakdown.table, breakdown.by, title, terminal_width(), [note] if note else []))
    if note and args.format != "table":  # the table says it under itself
        print(f"evalrun: {note}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evalrun.report.html import write_report

    base = args.compare
    if base is not None and str(base) == "latest" and not base.exists():
        from evalrun.analysis.baseline import latest_baseline

        base = latest_baseline(args.run_dir)  # none: one line naming what was looked at, exit 2
    print(write_report(args.run_dir, base, args.out))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from evalrun.config.catalog import catalog
    from evalrun.run.records import provider_key
    from evalrun.run.store import ListingError, find_provider, list_models

    provider, where = find_provider(args.provider, args.config, args.overrides)
    key = provider_key(args.provider, provider.api_key_env, where) if provider.api_key_env else None
    try:
        listed = list_models(args.provider, provider, key)
    except ListingError as exc:
        print(f"evalrun: error: {exc}", file=sys.stderr)
        return 1
    if listed.ids is None:
        print(
            f"evalrun: provider {args.provider!r} has no model list: GET {listed.url} answered 404 "
            "(not every OpenAI-compatible server has one; see the server's own documentation)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(listed.ids))
    print(f"evalrun: {len(listed.ids)} models listed by {listed.url}", file=sys.stderr)
    known = catalog(provider)
    if known is not None:  # where the server and evalrun's catalog of the preset disagree
        if new := [m for m in listed.ids if m not in known]:
            print(
                f"evalrun: not in evalrun's list for this provider: {', '.join(new)}; "
                f"to use one, add it to providers.{args.provider}.extra_models",
                file=sys.stderr,
            )
        if gone := [m for m in known if m not in listed.ids]:
            print(f"evalrun: known to evalrun but not listed by the server: {', '.join(gone)}", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from evalrun.config.starter import write_starter

    written = write_starter(args.dir, args.force)
    print("\n".join(str(p) for p in written))
    print(f"evalrun: next: evalrun run {written[0]}", file=sys.stderr)
    return 0


def cmd_serve_sim(args: argparse.Namespace) -> int:
    from evalrun.errors import ConfigError
    from evalrun.sim import options_from_args, serve_forever

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"serve-sim --port {args.port}: a TCP port is 0–65535 (0 picks a free one)")
    try:
        options = options_from_args(args)
    except ValueError as exc:
        # the simulator names its option; the user typed the flag
        flag = re.sub(r"simulator option '(\w+)'", lambda m: "--" + m[1].replace("_", "-"), str(exc).splitlines()[0])
        raise ConfigError(f"serve-sim: {flag}") from None
    try:
        serve_forever(options, port=args.port)
    except OSError as exc:
        raise ConfigError(
            f"serve-sim --port {args.port}: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
            " (another server there? pick another --port, or 0 for a free one)"
        ) from None
    return 0


def _console() -> Console:
    from evalrun.analysis.views import console

    return console()


def _print_summary(summary: list[dict[str, object]] | None, title: str) -> None:
    from evalrun.analysis.views import print_summary

    print_summary(summary, title)


COMMANDS = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "run": cmd_run,
    "summary": cmd_summary,
    "score": cmd_score,
    "cost": cmd_cost,
    "report": cmd_report,
    "compare": cmd_compare,
    "history": lambda args: _ci().cmd_history(args),
    "init": cmd_init,
    "models": cmd_models,
    "serve-sim": cmd_serve_sim,
    "merge": lambda args: _many().cmd_merge(args),
    "ci": lambda args: _ci().cmd_ci(args),
}


def _ci() -> Any:  # the CI and nightly commands, imported only when used
    import evalrun.cli_ci

    return evalrun.cli_ci


def _many() -> Any:  # the many-process commands, imported only when used
    import evalrun.cli_many

    return evalrun.cli_many
