"""`evalrun history` as text: the terminal table, Markdown for an issue body, CSV (one line per
night × cell × scorer) and JSON (the whole History record)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from evalrun.analysis.history import History, Point, Series
from evalrun.analysis.views import NEVER_DROPPED, Column, money, table

SPARKS = "▁▂▃▄▅▆▇█"
TREND_NIGHTS = 16  # the terminal's trend column: the last nights, one character each
COLUMNS = (  # key, header, how long it stays when space is short (views.fit)
    ("trend", "trend", 60),
    ("last", "last [95% CI]", 95),
    ("before", "before", 70),
    ("delta", "Δ pts", 92),
    ("q", "q", 80),
    ("step", "step", NEVER_DROPPED),
    ("cost_per_pass", "cost/pass", 40),
    ("tokens", "tok/req", 30),
    ("p50", "p50 s", 35),
    ("p95", "p95 s", 25),
    ("errors", "err", 50),
    ("drift", "drift", 85),
)


def spark(points: tuple[Point | None, ...], nights: int = TREND_NIGHTS) -> str:
    """The pass rates as block characters on the 0–100 % scale, a blank where a night has none."""
    return "".join(
        " " if p is None or p.rate is None else SPARKS[min(len(SPARKS) - 1, int(p.rate * len(SPARKS)))]
        for p in points[-nights:]
    )


def _pct(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v * 100:.{digits}f}%"


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def points(delta: float) -> str:
    """A rate difference in points, signed; no "-0.0" for a float sum's tiny negative."""
    return f"{round(delta * 100, 1) + 0.0:+.1f}"


def step_word(s: Series) -> str:
    if s.step is None or not s.step.flagged:
        return ""
    return "DROP" if s.step.delta < 0 else "RISE"


def drift_counts(h: History, s: Series) -> str:
    """The kinds of drift seen on this cell (or the whole run) in the window, with how often."""
    kinds: dict[str, int] = {}
    for d in h.drift:
        if d.label in ("", s.label):
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
    return ", ".join(f"{k}×{n}" if n > 1 else k for k, n in kinds.items())


def series_cells(h: History, s: Series) -> dict[str, str]:
    """One table row's texts: the trend, the last night's figures, the step test, the drift."""
    last = s.points[-1]
    st = s.step
    return {
        "cell": s.label,
        "scorer": s.scorer,
        "trend": spark(s.points),
        "last": "–" if last is None or last.rate is None else f"{_pct(last.rate)} [{_pct(last.low)}–{_pct(last.high)}]",
        "before": "–" if st is None else _pct(st.before, 1),
        "delta": "–" if st is None else points(st.delta),
        "q": "–" if st is None else f"{st.q_value:.2g}",
        "step": step_word(s),
        "cost_per_pass": money(None if last is None else last.cost_per_pass),
        "tokens": _num(None if last is None else last.tokens_per_request, ",.0f"),
        "p50": _num(None if last is None else last.latency_p50_s, ".3f"),
        "p95": _num(None if last is None else last.latency_p95_s, ".3f"),
        "errors": _pct(None if last is None else last.error_rate, 1),
        "drift": drift_counts(h, s),
    }


def _columns(h: History) -> list[Column]:
    cols = [Column("cell", "cell", NEVER_DROPPED, True)]
    if len({s.scorer for s in h.series}) > 1:
        cols.append(Column("scorer", "scorer", NEVER_DROPPED, True))
    return cols + [Column(k, label, keep, k in ("trend", "drift")) for k, label, keep in COLUMNS]


def headline(h: History) -> str:
    first, last = h.runs[0], h.runs[-1]
    span = f"{first.run_id} → {last.run_id}" if len(h.runs) > 1 else last.run_id
    return f"{h.experiment or '(no experiment)'}: {len(h.runs)} completed run(s), {span}"


def verdict(h: History) -> str:
    """One line: the flagged steps, or that there is none (and why none could be tested)."""
    tested = sum(s.step is not None for s in h.series)
    if not tested:
        if all(not s.scorer for s in h.series):
            return "no step tested: the runs have no scorer (pass rates need one)"
        return "no step tested: it takes two runs with the same cell"
    flagged = h.flagged
    if not flagged:
        return f"no significant step (last run vs the {len(h.runs) - 1} before it; {tested} cells × scorers tested)"
    return f"{len(flagged)} significant step(s) of {tested} tested: " + "; ".join(
        f"{s.label} {s.scorer} {points(s.step.delta)} pts" for s in flagged if s.step is not None
    )


def drift_lines(h: History) -> list[str]:
    """One line per night and change, naming the cells it touched (a prompt edit touches many)."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for d in h.drift:
        groups.setdefault((d.run_id, d.kind, d.before, d.after), []).append(d.label or "all cells")
    return [f"{run}: {kind} changed: {a} → {b} ({', '.join(cells)})" for (run, kind, a, b), cells in groups.items()]


def terminal_table(h: History, width: int) -> Any:
    """A rich Table that fits `width` (views.table drops the least important columns)."""
    cols = _columns(h)
    rows = [series_cells(h, s) for s in h.series]
    notes = [verdict(h)]
    notes += [f"step: BH-adjusted two-proportion test on effective rows, q < {h.alpha:g}; see docs/commands.md"]
    notes += [f"drift {line}" for line in drift_lines(h)]
    return table(headline(h), cols, rows, width, notes, whole="--out FILE.csv or .json has all")


def markdown(h: History) -> str:
    """An issue body: the verdict first, then the table, the drift and the skipped runs."""
    cols = _columns(h)
    flagged = h.flagged
    out = [f"## evalrun history · {headline(h)}", ""]
    out += [f"> **⚠️ {verdict(h)}**" if flagged else f"> ✅ {verdict(h)}", ""]
    out += ["| " + " | ".join(c.label for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for s in sorted(h.series, key=lambda s: not (s.step and s.step.flagged)):
        cells = series_cells(h, s)
        out.append("| " + " | ".join(cells[c.key].replace("|", "\\|") or " " for c in cols) + " |")
    out += ["", f"Step test: two-proportion test on effective rows, Benjamini–Hochberg over cells × scorers, "
            f"q < {h.alpha:g}."]  # fmt: skip
    if h.drift:
        out += ["", "### Drift", "", *(f"- {line}" for line in drift_lines(h))]
    if h.skipped:
        out += ["", "### Skipped runs", "", *(f"- {line}" for line in h.skipped)]
    return "\n".join(out) + "\n"


CSV_COLUMNS = (
    "experiment", "run_id", "started_at", "cell", "scorer", "pass_rate", "ci_low", "ci_high", "eff_rows",
    "cost_per_pass", "tokens_per_request", "latency_p50_s", "latency_p95_s", "error_rate", "drift",
    "step_before", "step_delta", "p_value", "q_value", "flagged",
)  # fmt: skip


def to_csv(h: History) -> str:
    """One line per night × cell × scorer; the step columns on each series' last night."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in h.series:
        for i, (run, p) in enumerate(zip(h.runs, s.points, strict=True)):
            if p is None:
                continue
            kinds = sorted({d.kind for d in h.drift if d.index == i and d.label in ("", s.label)})
            st = s.step if i == len(h.runs) - 1 else None
            w.writerow(
                [h.experiment, run.run_id, run.started_at, s.label, s.scorer, p.rate, p.low, p.high, p.eff_rows,
                 p.cost_per_pass, p.tokens_per_request, p.latency_p50_s, p.latency_p95_s, p.error_rate,
                 ";".join(kinds), *(("",) * 5 if st is None else
                                    (st.before, st.delta, st.p_value, st.q_value, st.flagged))]
            )  # fmt: skip
    return buf.getvalue()


def to_json(h: History) -> bytes:
    """The History record (orjson writes the dataclasses as objects; missing numbers as null)."""
    # the providers' settings are what --check-models asks with, not part of the history
    runs = [{f: getattr(r, f) for f in type(r).__dataclass_fields__ if f != "providers"} for r in h.runs]
    fields = {f: getattr(h, f) for f in History.__dataclass_fields__}
    return orjson.dumps({"flagged": len(h.flagged), **fields, "runs": runs}, option=orjson.OPT_INDENT_2)
