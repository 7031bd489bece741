"""The report's charts: SVG drawn in Python (no chart library, nothing fetched when the
page opens), and the small formatting helpers the charts and the report's tables share.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from evalrun.report.format import esc, fmt_money, fmt_num, fmt_pct, fmt_secs, price_label
from evalrun.report.svg import WIDTH, Scale, cut, legend, line, rect, scale, svg, text, text_width, tip, x_axis, y_axis

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from evalrun.report.data import Run

OUTLIERS_SHOWN = 60  # per box: more dots only hide each other
LABELS_UP_TO = 16  # scatter points get a label up to this many cells (Pareto points whenever there is room)
DODGE_PX = 13  # dots closer than this are spread apart: one dot must never hide another
TOKEN_PARTS = (
    ("prompt", "prompt (uncached)", "#3157c8"),
    ("cached", "cached prompt", "#9db4ee"),
    ("output", "visible output", "#2f9e5b"),
    ("reasoning", "reasoning", "#a463f2"),
)


# --------------------------------------------------------------------------- charts


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points that no other point dominates: none is as cheap
    or cheaper and as accurate or more, and strictly better in one."""
    return [
        i for i, (x, y) in enumerate(points) if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points)
    ]


def dodge(xy: list[tuple[float, float]], near: float = DODGE_PX) -> list[tuple[float, float]]:
    """Offsets (pixels) that spread points drawn within `near` pixels of each other into a row
    (rows of 8) around their spot, so eight cells at 100 % and the same cost are eight dots."""
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(xy):
        home = next((g for g in groups if abs(xy[g[0]][0] - x) < near and abs(xy[g[0]][1] - y) < near), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    out = [(0.0, 0.0)] * len(xy)
    for g in groups:
        for j, i in enumerate(g):
            row, col, width = j // 8, j % 8, min(8, len(g) - j // 8 * 8)
            out[i] = ((col - (width - 1) / 2) * near, row * near)
    return out


def _judging_split(r: Any, xfmt: Callable[[Any], str]) -> str:
    """What a request's cost on the chart is made of: its answer and its judging."""
    answer = (r.cost_total or 0.0) / r.requests if r.requests else 0.0
    judging = (r.judge_cost or 0.0) / r.requests if r.requests else 0.0
    return f"\nanswer {xfmt(answer)} + judging {xfmt(judging)} a request"


def score_vs_cost(run: Run, s: str | None = None) -> str:
    cells, s = run.cells, s or run.scorer
    if s is None:
        return (
            '<p class="empty">This run has no scorers, so there is no pass rate to plot. Add <code>scorers:'
            "</code> to the experiment and run <code>evalrun score RUN_DIR</code>.</p>"
        )
    xcol, xname, xfmt, tfmt, note = _x_measure(run)
    pts = cells[cells[xcol].notna() & cells[f"pass_rate_{s}"].notna()].reset_index(drop=True)
    if pts.empty:
        return note + f'<p class="empty">No cell has both a pass rate and a {esc(xname)}.</p>'
    if len(missing := cells[~cells.cell_id.isin(pts.cell_id)]):
        note += f'<p class="note">Not shown, no {esc(xname)}: {esc(", ".join(missing.label))}.</p>'
    L, R, T, B, H = 74, 28, 14, 54, 430
    sx = scale(pts[xcol], L, WIDTH - R, zero=False, log_ratio=30)
    lo_ci, hi_ci = pts[f"pass_ci_low_{s}"], pts[f"pass_ci_high_{s}"]
    sy = scale([max(0.0, lo_ci.min() - 0.02), min(1.0, hi_ci.max() + 0.02)], H - B, T, zero=False, n=6)
    sy = Scale(max(0.0, sy.lo), min(1.0, sy.hi), H - B, T)
    body = y_axis(sy, L, WIDTH - R, lambda v: fmt_pct(v, 0), f"pass rate · {s}", 6)
    body += x_axis(sx, T, H - B, tfmt, xname + (" · log scale" if sx.log else ""))
    xy = [(float(x), float(y)) for x, y in zip(pts[xcol], pts[f"pass_rate_{s}"])]
    front = pareto_front(xy)
    steps = sorted(xy[i] for i in front)
    if len(steps) > 1:  # a staircase: the best pass rate reachable for a given spend
        path = "".join(f"H{sx(x):.1f}V{sy(y):.1f}" for x, y in steps[1:])
        body.append(f'<path class="front-line" d="M{sx(steps[0][0]):.1f},{sy(steps[0][1]):.1f}{path}"/>')
    body += [
        line(sx(x), sy(lo), sx(x), sy(hi), "ci", f' stroke="{run.colours[m]}"')
        for (x, _), lo, hi, m in zip(xy, lo_ci, hi_ci, pts.model)
    ]
    offsets = dodge([(sx(x), sy(y)) for x, y in xy])
    at = [(sx(x) + dx, sy(y) + dy) for (x, y), (dx, dy) in zip(xy, offsets)]  # where each dot is drawn
    taken = _taken(at, steps, sx, sy)
    spot: dict[tuple[float, float], list[str]] = {}  # cells spread around one spot: say so
    for (x, y), label in zip(xy, pts.label):
        spot.setdefault((x, y), []).append(label)
    unlabelled = []
    for i in sorted(range(len(xy)), key=lambda i: (i not in front, -xy[i][1])):  # front labels pick first
        r, (x, y), on, (px, py) = pts.iloc[i], xy[i], i in front, at[i]
        same = [o for o in spot[x, y] if o != r.label]
        hint = f"{r.label}\npass rate {fmt_pct(y)} [{fmt_pct(lo_ci[i])}–{fmt_pct(hi_ci[i])}]\n{xname}: {xfmt(x)}" + (
            _point_notes(r, xfmt, xcol == "cost_per_graded_request", on, len(same))
        )
        body.append(
            f'<circle class="pt{" front" if on else ""}" cx="{px:.1f}" cy="{py:.1f}" '
            f'r="{7 if on else 5.5}" fill="{run.colours[r.model]}" data-cell="{esc(r.cell_id)}"{tip(hint)}/>'
        )
        if on or len(xy) <= LABELS_UP_TO:
            placed = _place_label(r.label, px, py, taken, (L, T, WIDTH - R, H - B))
            body += placed
            if not placed:
                unlabelled.append(r.label)
    key = legend(
        [(m, c, "dot") for m, c in run.colours.items() if m in set(pts.model)]
        + [("Pareto front", "", "ring"), ("95% interval", "#c9d0da", "")]
    )
    return note + key + svg(H, body, f"pass rate vs {xname} per cell") + _after_scatter(offsets, unlabelled)


def _x_measure(run: Run) -> tuple[str, str, Callable[[Any], str], Callable[[Any], str], str]:
    """The scatter's x axis: (column, name, value format, tick format, note). Cost per request,
    its judging included when the run has it; tokens per request for a run without prices."""
    currency = price_label(run.manifest)[0]
    if not run.has_cost:
        note = (
            '<p class="note">This run has no cost columns (no prices were known when it ran), so the x axis '
            "is total tokens per request instead of cost.</p>"
        )
        return "tokens_per_request", "total tokens per request", fmt_num, fmt_num, note
    xfmt, tfmt = (lambda v: fmt_money(v, currency)), (lambda v: fmt_money(v, currency, tick=True))
    if "cost_per_graded_request" in run.cells:
        return "cost_per_graded_request", f"cost per request, its judging included ({currency})", xfmt, tfmt, ""
    return "cost_per_request", f"cost per request ({currency})", xfmt, tfmt, ""


def _taken(
    at: list[tuple[float, float]], steps: list[tuple[float, float]], sx: Scale, sy: Scale
) -> list[tuple[float, ...]]:
    """The boxes a label must keep off: every dot, and the Pareto staircase."""
    taken: list[tuple[float, ...]] = [(px - 7, py - 7, px + 7, py + 7) for px, py in at]
    for (x1, y1), (x2, y2) in itertools.pairwise(steps):
        taken += [(sx(x1) + 8, sy(y1) - 3, sx(x2), sy(y1) + 3), (sx(x2) - 3, sy(y2) + 8, sx(x2) + 3, sy(y1))]
    return taken


def _point_notes(r: Any, xfmt: Callable[[Any], str], graded: bool, on_front: bool, same: int) -> str:
    """The tooltip lines of a dot after its pass rate and x value."""
    return (
        f"\n{r.requests} requests"
        + (_judging_split(r, xfmt) if graded else "")
        + ("\non the Pareto front" if on_front else "")
        + (f"\ndrawn beside {same} other cell(s) with the same figures" if same else "")
    )


def _after_scatter(offsets: list[tuple[float, float]], unlabelled: list[str]) -> str:
    """The notes under the scatter: dots drawn apart, labels left out."""
    after = ""
    if any(dx or dy for dx, dy in offsets):
        after += (
            '<p class="sub">Cells with the same figures are drawn side by side around their spot; '
            "hover a dot for its numbers.</p>"
        )
    if unlabelled:
        after += f'<p class="sub">No room for the label of: {esc("; ".join(unlabelled))} (hover the dots).</p>'
    return after


SPOTS = (
    (10, 4, "start"),
    (-10, 4, "end"),
    (9, -10, "start"),
    (9, 18, "start"),
    (-9, -10, "end"),
    (-9, 18, "end"),
    (0, -13, "middle"),
    (0, 22, "middle"),
    (0, -27, "middle"),
    (0, 36, "middle"),
)


def _place_label(s: str, px: float, py: float, taken: list[tuple[float, ...]], box: tuple[float, ...]) -> list[str]:
    """The first spot around the point whose label overlaps no other label, point or line; none
    if every spot is taken (a label drawn over another is worse than no label)."""
    w, own = text_width(s), (px - 7, py - 7, px + 7, py + 7)
    for dx, dy, anchor in SPOTS:
        x0 = px + dx - (w if anchor == "end" else w / 2 if anchor == "middle" else 0)
        r = (x0, py + dy - 10, x0 + w, py + dy + 3)
        inside = box[0] <= r[0] and r[2] <= box[2] + 20 and box[1] - 8 <= r[1] and r[3] <= box[3]
        if inside and not any(r[0] < t[2] and t[0] < r[2] and r[1] < t[3] and t[1] < r[3] for t in taken if t != own):
            taken.append(r)
            return [text(px + dx, py + dy, s, "lbl", anchor)]
    return []


def _box_stats(v: pd.Series) -> dict[str, Any]:
    q1, med, q3 = (float(v.quantile(q)) for q in (0.25, 0.5, 0.75))
    fence = v.between(q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1))
    out = v[~fence].sort_values()
    if len(out) > OUTLIERS_SHOWN:  # the extremes and an even sample between
        out = out.iloc[sorted({int(i * (len(out) - 1) / (OUTLIERS_SHOWN - 1)) for i in range(OUTLIERS_SHOWN)})]
    return {
        "q1": q1,
        "med": med,
        "q3": q3,
        "lo": float(v[fence].min()),
        "hi": float(v[fence].max()),
        "out": list(out),
        "n": len(v),
        "p95": float(v.quantile(0.95)),
        "max": float(v.max()),
    }


def latency_boxes(run: Run) -> str:
    ok = run.requests[run.requests.status == "ok"]
    groups = [
        (m, kind, _box_stats(v.astype(float)))
        for m in run.colours
        for col, kind in (("latency_s", "latency"), ("ttft_s", "ttft"))
        if col in ok and len(v := ok.loc[ok.model == m, col].dropna())
    ]
    if not groups:
        return '<p class="empty">No successful request to measure.</p>'
    lw = min(260.0, max(text_width(m, 12.5) for m, _, _ in groups) + 24)
    L, R, T, rows = lw + 10, 28, 10.0, {"latency": 40.0, "ttft": 30.0}
    H = T + sum(rows[k] for _, k, _ in groups) + 8 * len({m for m, _, _ in groups}) + 46
    sx = scale([x for _, _, g in groups for x in (g["lo"], g["hi"], *g["out"])], L, WIDTH - R, log_ratio=60)
    body = x_axis(sx, T, H - 46, fmt_secs, "seconds" + (" · log scale" if sx.log else ""))
    y, last = T, None
    for model, kind, g in groups:
        y += 8 if model != last and last is not None else 0
        c, mid, bh = run.colours[model], y + rows[kind] / 2, 20 if kind == "latency" else 12
        name = "latency" if kind == "latency" else "time to first token"
        body.append(
            text(lw, mid + 4, cut(model, lw - 8), "rowlbl", "end")
            if model != last
            else text(lw, mid + 4, name, "val", "end")
        )
        hint = (
            f"{model} · {name}\n{g['n']} requests\nmedian {g['med']:.3f} s · middle half {g['q1']:.3f}–"
            f"{g['q3']:.3f} s\np95 {g['p95']:.3f} s · max {g['max']:.3f} s"
        )
        stroke, (x1, x3) = f' stroke="{c}"', (sx(g["q1"]), sx(g["q3"]))
        fill = f' fill-opacity="{0.35 if kind == "latency" else 1}" rx="3"{stroke} stroke-width="1.5"'
        body += [
            line(sx(g["lo"]), mid, x1, mid, "whisker", stroke),
            line(x3, mid, sx(g["hi"]), mid, "whisker", stroke),
            *(line(sx(g[e]), mid - bh / 4, sx(g[e]), mid + bh / 4, "whisker", stroke) for e in ("lo", "hi")),
            rect(
                f"box box-{kind}",
                x1,
                mid - bh / 2,
                max(1.5, x3 - x1),
                bh,
                c if kind == "latency" else "#fff",
                hint,
                fill,
            ),
            line(sx(g["med"]), mid - bh / 2, sx(g["med"]), mid + bh / 2, "median"),
            *(f'<circle class="outlier" cx="{sx(v):.1f}" cy="{mid:.1f}" r="2.6" fill="{c}"/>' for v in g["out"]),
        ]
        y, last = y + rows[kind], model
    note = "Successful requests. Box: the middle half; line: the median; whiskers: 1.5 × IQR; dots: outliers. "
    note += (
        "Filled: total latency (sent → answer complete); white: time to first token of streamed requests."
        if any(k == "ttft" for _, k, _ in groups)
        else "Total latency, sent → answer complete. No request was streamed, so there is no time to first token."
    )
    return f'<p class="sub">{note}</p>' + svg(H, body, "latency distribution per model")


def token_bars(run: Run) -> str:
    req = run.requests[run.requests.prompt_tokens.notna() | run.requests.completion_tokens.notna()]
    if req.empty:
        return '<p class="empty">No request carried token usage.</p>'
    z = {
        c: req[c].fillna(0).astype(float)
        for c in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
    }
    parts = (
        req[["cell_id"]]
        .assign(
            prompt=(z["prompt_tokens"] - z["cached_tokens"]).clip(lower=0),
            cached=z["cached_tokens"],
            output=(z["completion_tokens"] - z["reasoning_tokens"]).clip(lower=0),
            reasoning=z["reasoning_tokens"],
        )
        .groupby("cell_id")
        .mean()
    )
    cells = run.cells[run.cells.cell_id.isin(parts.index)]
    lw = min(330.0, max(text_width(s, 12.5) for s in cells.label) + 16)
    L, R, T, bar, gap = lw + 10, 70, 6, 20, 12
    H = T + len(cells) * (bar + gap) + 40
    sx = scale([float(parts.loc[c].sum()) for c in cells.cell_id], L, WIDTH - R)
    body = x_axis(sx, T, H - 40, fmt_num, "mean tokens per request")
    for i, r in enumerate(cells.to_dict("records")):
        y, p, x = T + i * (bar + gap) + gap / 2, parts.loc[r["cell_id"]], sx(0)
        body += [
            text(lw, y + bar / 2 + 4, cut(r["label"], lw - 8), "rowlbl", "end", tip(r["label"])),
            f'<g class="tok-stack" data-cell="{esc(r["cell_id"])}">',
        ]
        for key, name, colour in TOKEN_PARTS:
            if (w := sx(float(p[key])) - sx(0)) > 0:
                hint = f"{r['label']}\n{name}: {fmt_num(p[key])} per request"
                body.append(rect(f"seg seg-{key}", x, y, w, bar, colour, hint))
                if w > text_width(fmt_num(p[key]), 10.5) + 8:
                    body.append(text(x + w / 2, y + bar / 2 + 3.5, fmt_num(p[key]), "inbar", "middle"))
                x += w
        body += ["</g>", text(x + 6, y + bar / 2 + 4, fmt_num(p.sum()), "val")]
    note = (
        '<p class="sub">Mean per request with usage. Cached tokens are part of the prompt; reasoning tokens '
        "are part of the completion, shown apart from the visible output.</p>"
    )
    key = legend([(name, colour, "") for _, name, colour in TOKEN_PARTS])
    return note + key + svg(H, body, "mean tokens per request per cell")
