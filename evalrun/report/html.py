"""`evalrun report RUN_DIR`: one self-contained HTML page of a finished run.

The page must open anywhere, offline, years later: no CDN, no web fonts, no chart library.
Charts are SVG written here; the only script is assets/report.js (table sorting and
tooltips). Dataset rows and model answers are untrusted: every value passes html.escape, and
the script sets tooltip text with textContent.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from evalrun.analysis.compare import FLIPS_SHOWN
from evalrun.analysis.compare_text import classes, gate_rule, passes, verdict_note
from evalrun.analysis.cost import judge_rows
from evalrun.analysis.views import answer_notes
from evalrun.report.charts import latency_boxes, score_vs_cost, token_bars
from evalrun.report.data import Run, load_run
from evalrun.report.explorer import explorer, explorer_note
from evalrun.report.format import (
    esc,
    fmt_money,
    fmt_num,
    fmt_pct,
    fmt_secs,
    fmt_signed,
    fmt_val,
    html_table,
    is_missing,
    parse_time,
    price_label,
    shorten,
    td,
)
from evalrun.report.svg import tip
from evalrun.report.timeline import timeline
from evalrun.run.store import RESULTS, GridInfo

if TYPE_CHECKING:
    from evalrun.analysis.compare import Comparison

REPORT = "report.html"
VERDICT = {
    "regressed": (0, "bad"),
    "improved": (1, "good"),
    "only in base": (2, "warn"),
    "only in new": (2, "warn"),
    "no matched items": (2, "warn"),
}
TONE = {"pass→fail": "bad", "fail→pass": "good"}
ANSWER_HEADS = {"truncated_answers": "cut at max_tokens", "empty_answers": "empty"}


def write_report(run_dir: Path, compare_base: Path | None = None, out: Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) and return its path; with `compare_base`, add the
    comparison with that earlier run."""
    run = load_run(run_dir)
    comparison = None
    if compare_base is not None:
        from evalrun.analysis.compare import compare_runs, gate_for

        comparison = compare_runs(compare_base, run_dir, gate_for(run_dir, None, None, None))
    out = out or run_dir / REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(run, comparison), encoding="utf-8")
    os.replace(tmp, out)  # a browser reloading never sees half a page
    return out


# --------------------------------------------------------------------------- data


def summary_table(run: Run) -> str:
    cells, (currency, _) = run.cells, price_label(run.manifest)
    if cells.empty:
        return '<p class="empty">No requests were recorded.</p>'
    scorers = [c[len("pass_rate_") :] for c in cells.columns if c.startswith("pass_rate_")]
    prompts = cells.prompt_id.nunique() > 1
    names = {"cost_total": "cost", "cost_per_request": "cost / req", f"cost_per_pass_{run.scorer}": "cost / correct"}
    costs = [c for c in names if run.has_cost and c in cells]
    cut = [c for c in ("truncated_answers", "empty_answers") if c in cells and cells[c].fillna(0).gt(0).any()]
    several = "items" in cells and bool((cells.rows > cells["items"]).any())  # repeats or choices: classes say more
    heads = [
        ("model", ""),
        *((p, "") for p in run.params),
        *([("prompt", "")] if prompts else []),
        *((h, "num") for h in ("requests", "errors", "retries")),
        *((ANSWER_HEADS[c], "num") for c in cut),
        *((f"pass · {s}", "") for s in scorers),
        *((f"rows stable-pass/flaky/stable-fail · {s}", "num") for s in scorers if several),
        *((h, "num") for h in ("tokens / req", "p50 s", "p95 s")),
        *((names[c], "num") for c in costs),
    ]
    rows = []
    for r in cells.to_dict("records"):
        swatch = f'<span class="swatch" style="background:{run.colours[r["model"]]}"></span>'
        tds = [td(swatch + esc(r["model"]), r["model"], "model", tip(f"{r['label']}\ncell {r['cell_id']}"))]
        tds += [td(esc(fmt_val(r[p])), fmt_val(r[p]), "") for p in run.params]
        tds += [td(esc(r["prompt_id"]), r["prompt_id"], "")] if prompts else []
        tds += [td(fmt_num(r[c]), r[c]) for c in ("requests", "errors", "retries")]
        tds += [td(fmt_num(r[c]), r[c], "num bad" if r[c] else "num") for c in cut]
        for s in scorers:
            rate, lo, hi = r[f"pass_rate_{s}"], r[f"pass_ci_low_{s}"], r[f"pass_ci_high_{s}"]
            bar = (
                ""
                if is_missing(lo)
                else (
                    f'<div class="cibar"><div class="span" style="left:{lo * 100:.1f}%;width:'
                    f'{(hi - lo) * 100:.1f}%"></div><div class="mark" style="left:'
                    f'{rate * 100:.1f}%"></div></div>'
                )
            )
            text = f'<div class="rate"><span class="r">{fmt_pct(rate)}<small>[{fmt_pct(lo, 0)}–{fmt_pct(hi, 0)}]</small></span>'
            tds.append(
                td(text + bar + "</div>", rate, "", tip(f"{s}: 95% interval over rows {fmt_pct(lo)}–{fmt_pct(hi)}"))
            )
        tds += [_classes_td(r, s) for s in scorers if several]
        tds += [td(fmt_num(r["tokens_per_request"]), r["tokens_per_request"])]
        tds += [td("–" if is_missing(r[c]) else f"{r[c]:.3f}", r[c]) for c in ("latency_p50_s", "latency_p95_s")]
        tds += [td(fmt_money(r[c], currency), r[c]) for c in costs]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    notes = answer_notes(cells.to_dict("records")) if cut else []
    warn = f'<p class="note" id="answer-notes">{"<br>".join(esc(n) for n in notes)}</p>' if notes else ""
    return warn + html_table("summary-table", heads, rows)


def _classes_td(r: dict[str, object], scorer: str) -> str:
    """A cell's rows by class for one scorer: how many always, sometimes, never passed."""
    counts = [r.get(f"{c}_{scorer}") for c in ("stable_pass", "flaky", "stable_fail")]
    text = "/".join(fmt_num(x) for x in counts)
    return td(esc(text), counts[1], "num", tip(f"{scorer}: rows that passed in every answer / some / none"))


def verdict_banner(c: Comparison | None) -> str:
    """The comparison's verdict, first on the page: a regression matters more than the run's
    status badge, and at the bottom of a long page under a green 'completed' it went unseen."""
    if c is None:
        return ""
    base = esc(c.base_dir.name)
    if not c.failed:
        return (
            f'<div class="verdict good" id="verdict"><b>PASS</b> against base run <code>{base}</code>: no cell '
            f'regressed ({c.compared} compared). <a href="#compare">The comparison</a></div>'
        )
    pts = lambda x: fmt_signed(x * 100, ".1f")  # noqa: E731
    cells = "".join(
        f"<li><b>{esc(r['cell'])}</b>: {fmt_pct(r['base_pass_rate'])} → {fmt_pct(r['new_pass_rate'])} "
        f"({pts(r['delta'])} pts, p {r['p_value']:.3g}, {r['pass_to_fail']} rows pass→fail)</li>"
        for r in c.regressed.to_dict("records")
    )
    why = f"{len(c.regressed)} cell(s) regressed" if len(c.regressed) else "nothing could be compared"
    if not len(c.regressed) and c.compared:
        why = "the runs are not comparable as they are (--strict)"
    return (
        f'<div class="verdict bad" id="verdict"><b>FAIL</b> against base run <code>{base}</code>: {esc(why)}. '
        f'<a href="#compare">The comparison</a> · <a href="#items">the rows</a>'
        + (f"<ul>{cells}</ul>" if cells else "")
        + "</div>"
    )


def compare_view(c: Comparison) -> str:
    n_reg = len(c.regressed)
    out = [
        f'<div class="banner bad"><b>FAIL</b> {n_reg} cell(s) regressed</div>'
        if n_reg
        else '<div class="banner bad"><b>FAIL</b> no cell could be compared</div>'
        if c.failed
        else '<div class="banner good"><b>PASS</b> no cell regressed</div>',
        f'<p class="sub">Base <code>{esc(c.base_dir)}</code> → this run. {esc(gate_rule(c)).replace("`", "")} '
        "Cells are matched by model, prompt name and parameters; rows by row id.</p>",
        *(f'<div class="banner warn">⚠️ {esc(w)}</div>' for w in c.warnings),
    ]
    rows, pts = [], lambda x: fmt_signed(x * 100, ".1f")
    for r in sorted(c.cells.to_dict("records"), key=lambda r: VERDICT.get(r["verdict"], (3, ""))[0]):
        v, tds = r["verdict"], [td(esc(r["cell"]), r["cell"], "")]
        rank, tone = VERDICT.get(v, (3, ""))
        if v.startswith("only") or v == "no matched items":
            tds += [td("–")] * 8
        else:  # the delta is coloured only when the gate calls it significant
            ci = f"<small>[{pts(r['delta_ci_low'])}, {pts(r['delta_ci_high'])}]</small>"
            tds += [
                td(str(r["matched"]), r["matched"]),
                td(fmt_pct(r["base_pass_rate"]), r["base_pass_rate"]),
                td(fmt_pct(r["new_pass_rate"]), r["new_pass_rate"]),
                td(pts(r["delta"]) + ci, r["delta"], f"num delta-{tone}"),
                td(f"{r['p_value']:.3g}", r["p_value"]),
                td(f"{r['pass_to_fail']} / {r['fail_to_pass']}", r["pass_to_fail"]),
                td(f"{classes(r, 'base')} → {classes(r, 'new')}", r.get("new_flaky")),
                td(fmt_signed(r["delta_latency_p50_s"], ".3f"), r["delta_latency_p50_s"]),
            ]
        note = verdict_note(r)  # the interval, where the test could not tell
        tds.append(td(f'<span class="badge {tone}">{esc(v)}</span><small>{esc(note)}</small>', rank, ""))
        rows.append(f'<tr class="{esc(v.replace(" ", "-"))}">' + "".join(tds) + "</tr>")
    heads = [
        "cell",
        "rows",
        "base",
        "new",
        "Δ pts [95% CI]",
        "p",
        "rows pass→fail / fail→pass",
        "rows stable-pass/flaky/stable-fail base → new",
        "Δ p50 s",
        "verdict",
    ]
    out.append(html_table("compare-table", [(h, "num" if 0 < i < 9 else "") for i, h in enumerate(heads)], rows))
    return "".join(out) + _flips(c)


def _flips(c: Comparison) -> str:
    if c.flips.empty:
        return '<h3>Flipped rows</h3><p class="sub">No row changed class (stable-pass, flaky, stable-fail).</p>'
    verdicts = dict(zip(c.cells.cell, c.cells.verdict))
    out = [f'<h3>Flipped rows <span class="badge">{len(c.flips)}</span></h3>']
    for cell, group in sorted(c.flips.groupby("cell"), key=lambda kv: VERDICT.get(verdicts.get(kv[0], ""), (3,))[0]):
        pf = int((group.direction == "pass→fail").sum())
        shown = group.sort_values("direction", ascending=False, kind="stable").groupby("direction").head(FLIPS_SHOWN)
        shown = shown.sort_values("direction", ascending=False, kind="stable")  # pass→fail first
        rows = "".join(
            f'<tr class="flip"><td class="mono">{esc(f["row_id"])}</td><td class="num">{passes(f, "base")}</td>'
            f'<td class="num">{passes(f, "new")}</td><td><span class="badge {TONE[f["direction"]]}">'
            f'{f["direction"]}</span></td><td><div class="answer">{esc(shorten(f["base_content"]))}'
            f'</div></td><td><div class="answer">{esc(shorten(f["new_content"]))}</div></td></tr>'
            for f in shown.to_dict("records")
        )
        more = len(group) - len(shown)
        out.append(
            f'<details class="flips"{" open" if verdicts.get(cell) == "regressed" else ""}><summary>{esc(cell)} '
            f'— <span class="delta-neg">{pf} pass→fail</span>, <span class="delta-pos">{len(group) - pf} '
            'fail→pass</span></summary><table><thead><tr><th>row</th><th class="num">base passes</th><th class='
            '"num">new passes</th><th></th><th>base answer</th><th>new answer</th></tr></thead><tbody>'
            f"{rows}</tbody></table>"
            + (
                f'<p class="more">…and {more} more in compare_flips.parquet (evalrun compare writes it)</p>'
                if more
                else ""
            )
            + "</details>"
        )
    return "".join(out)


# --------------------------------------------------------------------------- page


def _header(run: Run) -> dict[str, str]:
    """The page template's header fields: run facts, then the key figures as cards."""
    m, cells, req = run.manifest, run.cells, run.requests
    grid, status = m.grid or GridInfo(), str(m.status or "unknown")
    start, end = parse_time(m.started_at), parse_time(m.finished_at)
    took = f" ({fmt_secs(round((end - start).total_seconds(), 1))})" if start and end else ""
    utc = [t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "–" for t in (start, end)]
    meta = [
        f"<span>run <b class=mono>{esc(m.run_id or run.dir.name)}</b></span>",
        f'<span class="badge {dict(completed="good", failed="bad").get(status, "warn")}">{esc(status)}</span>',
        f"<span>started <b>{utc[0]}</b></span>",
        f"<span>finished <b>{utc[1]}</b>{took}</span>",
    ]
    meta += [f"<span>resumed {len(m.resumes)}×</span>"] if m.resumes else []
    currency, source = price_label(m)
    meta += [f"<span>prices <b>{esc(currency)}</b> from <code>{esc(source)}</code></span>"] if run.has_cost else []
    meta.append(f"<span>evalrun {esc(m.evalrun_version or '')}</span>")
    errors, n_models = int((req.status == "error").sum()), max(cells.model.nunique() if len(cells) else 0, 1)
    kpis = [
        (
            "cells",
            fmt_num(len(cells) if grid.cells is None else grid.cells),
            f"{n_models} model(s) × {len(cells) // n_models} settings",
        ),
        ("requests", fmt_num(grid.requests), f"{fmt_num(grid.rows)} rows × {grid.repeats or 1} repeats"),
        (
            "recorded",
            fmt_num(m.counts.recorded if m.counts else len(req)),
            f"{fmt_num(m.counts.missing if m.counts else 0)} not sent",
        ),
        ("errors", fmt_num(errors), f"{fmt_pct(errors / max(len(req), 1))} of recorded"),
        ("retries", fmt_num(req.attempts.fillna(1).sub(1).clip(lower=0).sum()), "extra attempts"),
    ]
    if run.scorer and len(cells):
        best = cells.loc[cells[f"pass_rate_{run.scorer}"].idxmax()]
        kpis.append((f"best {run.scorer}", fmt_pct(best[f"pass_rate_{run.scorer}"]), best.label))
    if run.has_cost:
        answers, judges = req.cost_total.sum(), sum(r.get("cost_total") or 0.0 for r in judge_rows(run.dir))
        total = answers + judges
        per = f"{fmt_money(answers / max(len(req), 1), currency)} per request"
        sub = f"answers {fmt_money(answers, currency)} + judges {fmt_money(judges, currency)}" if judges else per
        kpis.append(("total cost", fmt_money(total, currency), sub))
    desc = (m.config or {}).get("description")  # the experiment's YAML
    cards = (
        f'<div class="kpi{" bad" if k == "errors" and errors else ""}"><div class="k">{esc(k)}</div>'
        f'<div class="v">{v}</div><div class="s">{esc(s)}</div></div>'
        for k, v, s in kpis
    )
    return {
        "experiment": esc(m.experiment or run.dir.name),
        "meta": "".join(meta),
        "kpis": "".join(cards),
        "description": f'<p class="desc">{esc(desc)}</p>' if desc else "",
    }


def _score_views(run: Run) -> dict[str, str]:
    """The score-vs-cost chart once per scorer, and a picker (a few lines of report.js show the
    chosen one; without script the first stays shown)."""
    if len(run.scorers) < 2:
        scorer = f"<code>{esc(run.scorer)}</code> (the only scorer)" if run.scorer else "the scorer"
        return {"scorer": scorer, "score_cost": score_vs_cost(run)}
    options = "".join(f'<option value="{esc(s)}">{esc(s)}</option>' for s in run.scorers)
    views = "".join(
        f'<div class="by-scorer" data-scorer="{esc(s)}"{" hidden" if i else ""}>{score_vs_cost(run, s)}</div>'
        for i, s in enumerate(run.scorers)
    )
    return {"scorer": f'<select id="scorer-pick" aria-label="scorer">{options}</select>', "score_cost": views}


def render(run: Run, comparison: Comparison | None = None) -> str:
    """The page: assets/page.html holds its structure and prose, this fills in the run."""
    assets, m = resources.files("evalrun.report") / "assets", run.manifest
    compare = (
        ""
        if comparison is None
        else (
            f'<section class="card" id="compare"><h2>Compared with the base run</h2>{compare_view(comparison)}</section>'
        )
    )
    rows, rows_data = explorer(run, comparison)
    failed = "FAIL · " if comparison is not None and comparison.failed else ""
    return Template((assets / "page.html").read_text("utf-8")).substitute(
        _header(run),
        title=esc(f"{failed}{m.experiment or run.dir.name} · {m.run_id or ''} · evalrun report"),
        css=(assets / "report.css").read_text("utf-8"),
        js=(assets / "report.js").read_text("utf-8") + (assets / "explorer.js").read_text("utf-8"),
        verdict=verdict_banner(comparison),
        explorer=rows,
        explorer_data=rows_data,
        explorer_note=explorer_note(run),
        **_score_views(run),
        latency=latency_boxes(run),
        tokens=token_bars(run),
        timeline=timeline(run),
        summary=summary_table(run),
        compare=compare,
        compare_link='<a href="#compare">Compared with the base run</a>' if compare else "",
        results=esc(f"{run.dir.name}/{RESULTS}"),
    )
