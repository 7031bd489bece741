"""What `evalrun compare` writes: compare.md (a PR comment), JUnit XML, Parquet and a JSON verdict."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from evalrun.analysis.compare import ANSWER_CHARS, FLIPS_SHOWN, Comparison
from evalrun.analysis.views import missing
from evalrun.run.store import write_json


def _pct(x: Any) -> str:
    return "–" if missing(x) else f"{x * 100:.1f}%"


def _pts(x: Any) -> str:
    return "–" if missing(x) else f"{x * 100:+.1f}"


def _num(x: Any, fmt: str = "+.3f") -> str:
    return "–" if missing(x) else format(x, fmt)


def _int(x: Any) -> str:
    return "–" if missing(x) else f"{int(x):,}"


def _cellmd(text: Any) -> str:
    s = "" if missing(text) else str(text)
    s = s[:ANSWER_CHARS] + ("…" if len(s) > ANSWER_CHARS else "")
    return html.escape(s).replace("|", "\\|").replace("\n", " ")


ICON = {
    "regressed": "❌ regressed",
    "improved": "✅ improved",
    "no change": "no change",
    "no significant change": "no significant change",
    "within threshold": "within threshold",
    "no matched items": "⚠️ no matched items",
    "only in base": "⚠️ only in base",
    "only in new": "⚠️ only in new",
}


def verdict_note(r: dict[str, Any]) -> str:
    """What follows the verdict: the interval where the test could not tell, so that a reader
    sees how wide the doubt is instead of a bare "unchanged"; else nothing."""
    if r["verdict"] in ("no significant change", "within threshold"):
        return f" (Δ {_pts(r['delta'])} pts, 95% CI [{_pts(r['delta_ci_low'])}, {_pts(r['delta_ci_high'])}])"
    return ""


def gate_rule(c: Comparison) -> str:
    """What a cell's pass rate is and when it regresses, in one paragraph (compare.md, the report)."""
    g = c.gate
    unit = (
        f"a row passes when at least {g.min_passes} of its answers (repeats × choices) pass"
        if g.min_passes
        else "each row's pass fraction over its answers (repeats × choices)"
    )
    return (
        f"Scorer `{c.scorer}`; the unit is the dataset row: {unit}, and a cell's pass rate is the mean over its "
        f"rows. A cell regresses when its pass rate drops by more than {g.fail_on_drop * 100:g} points and the "
        f"paired test on rows gives p < {g.alpha:g} (the exact McNemar test when each row is one pass/fail, else "
        "a sign-flip permutation test on the per-row differences). Deltas are over the rows both runs answered; "
        "intervals are a bootstrap over rows."
    )


def classes(r: dict[str, Any], side: str) -> str:
    """A side's rows by class: stable-pass / flaky / stable-fail."""
    return "/".join(_int(r.get(f"{side}_{c}")) for c in ("stable_pass", "flaky", "stable_fail"))


def passes(f: dict[str, Any], side: str) -> str:
    """A flipped row's passes on one side, "3/5", from an older compare_flips row: "–"."""
    if missing(f.get(f"{side}_passes")):
        return "–"
    return f"{int(f[f'{side}_passes'])}/{int(f[f'{side}_answers'])}"


def headline(c: Comparison) -> str:
    if len(c.regressed):
        return f"**FAIL**: {len(c.regressed)} cell(s) regressed"
    if c.failed:
        return "**FAIL** (--strict): the baseline differs from this run"
    return "**PASS**: no cell regressed"


def to_markdown(c: Comparison, flips: bool = True) -> str:
    out = [f"## evalrun compare: {headline(c)}", "", f"Base `{c.base_dir}` → new `{c.new_dir}`. {gate_rule(c)}", ""]
    out += [f"> ⚠️ {w}" for w in c.warnings] + ([""] if c.warnings else [])
    # with several answers per row, the rows by class (stable-pass/flaky/stable-fail) on each side
    several = "base_answers" in c.cells and bool((c.cells.base_answers > c.cells.matched).fillna(False).any())
    out += [
        "| cell | rows | base | new | Δ pts [95% CI] | p | Δ score | Δ p50 s | Δ p95 s | Δ tokens/req | Δ cost/item | "
        + ("rows ✓/~/✗ base → new | " if several else "")
        + "|",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|" + ("---|" if several else "") + "---|",
    ]
    for r in c.cells.to_dict("records"):
        if r["verdict"].startswith("only"):
            items = r["base_items"] if r["verdict"] == "only in base" else r["new_items"]
            gap = "| " if several else ""
            out.append(f"| {_cellmd(r['cell'])} | {_int(items)} | | | | | | | | | | {gap}{ICON[r['verdict']]} |")
            continue
        kinds = f"{classes(r, 'base')} → {classes(r, 'new')} | " if several else ""
        out.append(
            f"| {_cellmd(r['cell'])} | {_int(r['matched'])} | {_pct(r['base_pass_rate'])} | "
            f"{_pct(r['new_pass_rate'])} | {_pts(r['delta'])} [{_pts(r['delta_ci_low'])}, {_pts(r['delta_ci_high'])}]"
            f" | {_num(r['p_value'], '.3g')} | {_num(r['score_delta'])} | {_num(r['delta_latency_p50_s'])} | "
            f"{_num(r['delta_latency_p95_s'])} | {_num(r['delta_tokens_per_request'], '+.1f')} | "
            f"{_num(r['delta_cost_per_item'], '+.6f')} | {kinds}{ICON.get(r['verdict'], '')}{verdict_note(r)} |"
        )
    if len(c.flips) and not flips:
        out += ["", f"{len(c.flips)} item(s) flipped between the runs: listed in compare.md."]
    elif len(c.flips):
        out += ["", "### Flipped items", ""]
        order = {"regressed": 0, "improved": 1}
        verdicts = dict(zip(c.cells.cell, c.cells.verdict))
        for cell, group in sorted(c.flips.groupby("cell"), key=lambda kv: order.get(verdicts.get(kv[0], ""), 2)):
            for direction in ("pass→fail", "fail→pass"):
                part = group[group.direction == direction]
                if part.empty:
                    continue
                out += [
                    f"**{_cellmd(cell)}** — {len(part)} {direction}",
                    "",
                    "| row | base passes | new passes | base answer | new answer |",
                    "|---|---:|---:|---|---|",
                ]
                for f in part.head(FLIPS_SHOWN).to_dict("records"):
                    out.append(
                        f"| {_cellmd(f['row_id'])} | {passes(f, 'base')} | {passes(f, 'new')} | "
                        f"{_cellmd(f['base_content'])} | {_cellmd(f['new_content'])} |"
                    )
                if len(part) > FLIPS_SHOWN:
                    out.append(f"\n…and {len(part) - FLIPS_SHOWN} more in compare_flips.parquet")
                out.append("")
    return "\n".join(out) + "\n"


def _case(name: str, inner: str = "") -> str:
    head = f'  <testcase classname="evalrun.analysis.compare" name="{html.escape(name, quote=True)}"'
    return f"{head}>{inner}</testcase>" if inner else f"{head}/>"


def to_junit(c: Comparison) -> str:
    cases = []
    for r in c.cells.to_dict("records"):
        if r["verdict"] == "regressed":
            msg = (
                f"pass rate {_pct(r['base_pass_rate'])} → {_pct(r['new_pass_rate'])} ({_pts(r['delta'])} pts, "
                f"p={r['p_value']:.3g}, {r.get('test') or 'mcnemar'} on {_int(r['matched'])} rows); "
                f"{r['pass_to_fail']} row(s) pass→fail"
            )
            cases.append(_case(r["cell"], f'<failure message="{html.escape(msg, quote=True)}"/>'))
        elif r["verdict"].startswith("only"):
            cases.append(_case(r["cell"], f'<skipped message="{r["verdict"]}"/>'))
        else:
            cases.append(_case(r["cell"]))
    if c.warnings:  # one case for "is the baseline comparable?": a failure only under --strict
        msg = html.escape("; ".join(c.warnings), quote=True)
        tag = "failure" if c.gate.strict else "skipped"
        cases.append(_case("baseline matches this run", f'<{tag} message="{msg}"/>'))
    failures = sum("<failure" in x for x in cases)
    skipped = sum("<skipped" in x for x in cases)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="evalrun compare" tests="{len(cases)}" failures="{failures}" skipped="{skipped}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )


def write_outputs(c: Comparison, out_dir: Path, junit: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(to_markdown(c), encoding="utf-8")
    c.cells.drop(columns=["cell_key"]).to_parquet(out_dir / "compare.parquet", index=False)
    c.flips.to_parquet(out_dir / "compare_flips.parquet", index=False)
    write_json(
        out_dir / "compare.json",
        {
            "base": str(c.base_dir),
            "new": str(c.new_dir),
            "scorer": c.scorer,
            "fail_on_drop": c.gate.fail_on_drop,
            "alpha": c.gate.alpha,
            "min_passes": c.gate.min_passes,
            "strict": c.gate.strict,
            "warnings": c.warnings,
            "regressed": list(c.regressed.cell),
            "verdict": "fail" if c.failed else "pass",
        },
    )
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(to_junit(c), encoding="utf-8")
