"""`evalrun history --out FILE`: the history as an offline HTML page in the report's house style
(its CSS and script, inlined; one small SVG trend per cell and scorer), or as Markdown, JSON or
CSV — the file's extension says which."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from evalrun.analysis.history import History, Series
from evalrun.analysis.history_text import (
    drift_counts,
    headline,
    markdown,
    points,
    step_word,
    to_csv,
    to_json,
    verdict,
)
from evalrun.errors import ConfigError
from evalrun.report.format import esc, fmt_num, fmt_pct, html_table, td
from evalrun.report.svg import tip

FORMATS = (".html", ".md", ".json", ".csv")
TREND_W, TREND_H, PAD = 180.0, 40.0, 4.0
POINTS_SHOWN = 90  # beyond this many nights a trend is a line without per-night dots
EXTRA_CSS = """
svg.trend { display: block; width: 180px; height: 40px; overflow: visible; }
svg.trend .band { fill: #b9c8ee; opacity: 0.55; }
svg.trend .line { fill: none; stroke: var(--accent); stroke-width: 1.6; }
svg.trend .night { fill: var(--accent); }
svg.trend .last { fill: var(--accent); stroke: #fff; stroke-width: 1.2; }
svg.trend .last.flagged { fill: var(--bad); }
svg.trend .drift { stroke: var(--warn); stroke-width: 1.2; stroke-dasharray: 2 2; }
svg.trend .frame { stroke: var(--grid); fill: none; }
tr.flagged td { background: var(--bad-bg); }
"""


def check_out(out: Path | None, alpha: float) -> None:
    """Refuse, before anything is read, a --out whose extension says no format, or a bad --alpha."""
    if not 0 < alpha < 1:
        raise ConfigError(f"history --alpha {alpha:g}: must be between 0 and 1 (e.g. 0.05)")
    if out is not None and out.suffix.lower() not in FORMATS:
        raise ConfigError(f"history --out {out}: the extension says the format: {', '.join(FORMATS)}")


def write_history(h: History, out: Path) -> Path:
    """Write `out` in the format its extension names; atomically (a reader never sees half)."""
    suffix = out.suffix.lower()
    data: bytes = (
        render(h).encode()
        if suffix == ".html"
        else markdown(h).encode()
        if suffix == ".md"
        else to_json(h)
        if suffix == ".json"
        else to_csv(h).encode()
    )
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"history --out {out}: cannot write it ({exc.strerror or exc})") from None
    return out


def _y(rate: float) -> float:
    return PAD + (1 - rate) * (TREND_H - 2 * PAD)


def trend_svg(h: History, s: Series) -> str:
    """The pass rate night by night on a 0–100 % scale: its interval as a band, drift as dashed
    marks, the last night as a dot (red when its step is flagged)."""
    n = len(s.points)
    x = [PAD + (TREND_W - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    body = [f'<rect class="frame" x="0" y="0" width="{TREND_W:.0f}" height="{TREND_H:.0f}"/>']
    segments: list[list[int]] = [[]]
    for i, p in enumerate(s.points):  # a night without this cell breaks the line
        if p is None or p.rate is None:
            segments.append([])
        else:
            segments[-1].append(i)
    for seg in (g for g in segments if g):
        pts = [(x[i], p) for i in seg if (p := s.points[i]) is not None and p.rate is not None]
        up = [f"{px:.1f},{_y(p.rate if p.high is None else p.high):.1f}" for px, p in pts if p.rate is not None]
        down = [f"{px:.1f},{_y(p.rate if p.low is None else p.low):.1f}" for px, p in pts if p.rate is not None]
        body.append(f'<polygon class="band" points="{" ".join(up + down[::-1])}"/>')
        line = " ".join(f"{px:.1f},{_y(p.rate):.1f}" for px, p in pts if p.rate is not None)
        body.append(f'<polyline class="line" points="{line}"/>')
    for d in h.drift:
        if d.label in ("", s.label):
            hint = f"{d.run_id}: {d.kind} changed: {d.before} → {d.after}"
            body.append(
                f'<line class="drift" x1="{x[d.index]:.1f}" y1="0" x2="{x[d.index]:.1f}" y2="{TREND_H:.0f}"{tip(hint)}/>'
            )
    body += _dots(s, x)
    return (
        f'<svg class="trend" viewBox="0 0 {TREND_W:.0f} {TREND_H:.0f}" role="img" '
        f'aria-label="{esc(s.label)} {esc(s.scorer)} pass rate by night" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )


def _dots(s: Series, x: list[float]) -> list[str]:
    """A dot per night (with its figures as a tooltip) while there are few; always the last one."""
    out = []
    n = len(s.points)
    for i, p in enumerate(s.points):
        if p is None or p.rate is None or (n > POINTS_SHOWN and i < n - 1):
            continue
        last = i == n - 1
        cls = "last flagged" if last and s.step and s.step.flagged else "last" if last else "night"
        hint = f"{p.run_id}: {fmt_pct(p.rate)} [{fmt_pct(p.low)}–{fmt_pct(p.high)}]"
        out.append(
            f'<circle class="{cls}" cx="{x[i]:.1f}" cy="{_y(p.rate):.1f}" r="{3.2 if last else 1.8}"{tip(hint)}/>'
        )
    return out


def _row(h: History, s: Series, several: bool) -> str:
    last, st = s.points[-1], s.step
    flagged = bool(st and st.flagged)
    tone = "" if not flagged or st is None else "num delta-bad" if st.delta < 0 else "num delta-good"
    rate = None if last is None else last.rate
    ci = "" if last is None else f"<small>[{fmt_pct(last.low)}–{fmt_pct(last.high)}]</small>"
    word = step_word(s)
    tds = [
        td(esc(s.label), s.label, "model"),
        *([td(esc(s.scorer), s.scorer, "")] if several else []),
        td(trend_svg(h, s), None, ""),
        td(fmt_pct(rate) + ci, rate),
        td(fmt_pct(None if st is None else st.before), None if st is None else st.before),
        td("–" if st is None else points(st.delta), None if st is None else st.delta, tone or "num"),
        td(
            "–" if st is None else f"{st.q_value:.3g}",
            None if st is None else st.q_value,
            extra="" if st is None else tip(f"p = {st.p_value:.3g} before the adjustment"),
        ),
        td(f'<span class="badge bad">{word}</span>' if word else "", word, ""),
    ]
    figures = (
        (None, None, None, None, None)
        if last is None
        else (last.cost_per_pass, last.tokens_per_request, last.latency_p50_s, last.latency_p95_s, last.error_rate)
    )
    tds += [td(fmt_num(v), v) for v in figures[:4]]
    tds += [td(fmt_pct(figures[4]), figures[4]), td(esc(drift_counts(h, s)), drift_counts(h, s), "")]
    return f'<tr class="{"flagged" if flagged else ""}">' + "".join(tds) + "</tr>"


HEADS = [
    ("cell", ""),
    ("scorer", ""),
    ("pass rate by night", ""),
    ("last [95% CI]", "num"),
    ("before (pooled)", "num"),
    ("Δ pts", "num"),
    ("q (BH)", "num"),
    ("step", ""),
    ("cost / pass", "num"),
    ("tokens / req", "num"),
    ("p50 s", "num"),
    ("p95 s", "num"),
    ("errors", "num"),
    ("drift", ""),
]


def _sections(h: History) -> str:
    flagged = h.flagged
    banner = (
        f'<div class="banner bad"><b>STEP</b> {esc(verdict(h))}</div>'
        if flagged
        else f'<div class="banner good"><b>OK</b> {esc(verdict(h))}</div>'
    )
    several = len({s.scorer for s in h.series}) > 1
    heads = [hd for hd in HEADS if several or hd[0] != "scorer"]
    rows = [_row(h, s, several) for s in sorted(h.series, key=lambda s: not (s.step and s.step.flagged))]
    out = [
        f'<section class="card" id="trends"><h2>Pass rate by night</h2>{banner}<p class="sub">The last run against '
        "the pooled runs before it in the window: a two-proportion test on effective rows (the repeat-aware "
        f"sample size of each rate), Benjamini–Hochberg over cells × scorers; a step is flagged at q &lt; {h.alpha:g}. "
        "Band: each night's 95% interval; dashed marks: drift.</p>"
        + html_table("history-table", heads, rows)
        + "</section>"
    ]
    drift = [
        "<tr>"
        + "".join(td(esc(v), v, "") for v in (d.run_id, d.label or "all cells", d.kind, d.before, d.after))
        + "</tr>"
        for d in h.drift
    ]
    drift_heads = [("night", ""), ("cell", ""), ("what changed", ""), ("before", ""), ("after", "")]
    body = (
        html_table("drift-table", drift_heads, drift)
        if drift
        else '<p class="empty">Nothing changed between nights.</p>'
    )
    out.append(f'<section class="card" id="drift"><h2>Drift</h2>{body}</section>')
    if h.skipped:
        items = "".join(f"<li>{esc(line)}</li>" for line in h.skipped)
        out.append(f'<section class="card" id="skipped"><h2>Skipped runs</h2><ul>{items}</ul></section>')
    return "".join(out)


def render(h: History) -> str:
    """The whole page: the report's stylesheet and script inlined, no network."""
    assets = resources.files("evalrun.report") / "assets"
    css = (assets / "report.css").read_text("utf-8") + EXTRA_CSS
    js = (assets / "report.js").read_text("utf-8")
    meta = [
        f"<span><b>{len(h.runs)}</b> completed run(s)</span>",
        f"<span>first <b class=mono>{esc(h.runs[0].run_id)}</b></span>",
        f"<span>last <b class=mono>{esc(h.runs[-1].run_id)}</b></span>",
        f"<span>from <code>{esc(h.source)}</code></span>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(headline(h))} · evalrun history</title>\n<style>{css}</style>\n</head>\n<body>\n<main>\n"
        f'<header><div class="eyebrow">evalrun history</div><h1>{esc(h.experiment)}</h1>'
        f'<div class="meta">{"".join(meta)}</div></header>\n'
        + _sections(h)
        + "\n<footer>Written by evalrun history from the runs' summary.parquet and manifest.json. "
        "Self-contained: it needs no network.</footer>\n</main>\n"
        f"<script>{js}</script>\n</body>\n</html>\n"
    )
