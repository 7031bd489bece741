"""The report's timeline chart: requests, errors, retries and rate-limit waits over the run,
counted into equal time bins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalrun.report.format import fmt_num, fmt_secs, shorten
from evalrun.report.svg import WIDTH, Scale, legend, line, rect, scale, svg, text, tip, x_axis, y_axis

if TYPE_CHECKING:
    import pandas as pd

    from evalrun.report.data import Run

OK_COLOUR, WAIT_COLOUR, RETRY_COLOUR = "#b9c8ee", "#efb118", "#17202c"
BIN_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
WAIT_SHOWN = 0.01  # seconds waited in all before the wait panel is drawn (the limiter's own µs are not waits)
ERROR_COLOURS = ("#d1495b", "#f08a24", "#8f2d56", "#e0b11b", "#6d597a", "#b56576")


@dataclass(frozen=True, slots=True)
class _Bins:
    """The run's requests counted into `n` bins of `width` seconds."""

    at: str  # the time column a request is placed by
    width: float
    n: int
    counts: pd.DataFrame  # bin × outcome ("ok" or an error type)
    retries: pd.Series  # retries per bin
    waits: pd.Series  # rate-limit wait per bin, seconds
    rtypes: pd.Series  # one retry type per retry
    by_type: pd.DataFrame  # bin × retry type
    kinds: list[str]  # "ok", then the error types
    example: dict[str, str]  # outcome → an example error message (a tooltip line)
    colour: dict[str, str]  # outcome → colour


def _bin(req: pd.DataFrame, at: str) -> _Bins:
    import pandas as pd

    el = (req[at] - req[at].min()).dt.total_seconds()
    width = next((w for w in BIN_S if el.max() / w < 48), BIN_S[-1])
    nbins, b = int(el.max() // width) + 1, (el // width).astype(int)
    outcome = req.error_type.fillna("error").where(req.status == "error", "ok")
    counts = pd.crosstab(b, outcome).reindex(range(nbins), fill_value=0)
    retries = (req.attempts.fillna(1) - 1).clip(lower=0).groupby(b).sum().reindex(range(nbins), fill_value=0)
    waits = req.limiter_wait_s.fillna(0).groupby(b).sum().reindex(range(nbins), fill_value=0)
    rtypes = req.retry_types.explode().dropna()
    by_type = pd.crosstab(b.loc[rtypes.index].to_numpy(), rtypes.to_numpy()) if len(rtypes) else pd.DataFrame()
    kinds = ["ok"] + sorted(k for k in counts.columns if k != "ok")
    errs = req[req.status == "error"]
    example = {
        k: "\ne.g. " + shorten(next((m for m in g.error_message if isinstance(m, str)), ""))[:200]
        for k, g in errs.groupby(errs.error_type.fillna("error"))
    } | {"ok": ""}
    colour = {"ok": OK_COLOUR} | {k: ERROR_COLOURS[i % len(ERROR_COLOURS)] for i, k in enumerate(kinds[1:])}
    return _Bins(at, width, nbins, counts, retries, waits, rtypes, by_type, kinds, example, colour)


def _bars(bins: _Bins, sx: Scale, sy: Scale, sw: Scale, base: float, waited: bool) -> list[str]:
    """Per bin: the stacked outcomes, the wait bar (when drawn) and the retries' line and dots."""
    width, retries = bins.width, bins.retries
    body: list[str] = []
    pad, dots = 1 if bins.n < 120 else 0, []
    bw = max(1.0, sx(width) - sx(0) - 2 * pad)
    for i in range(bins.n):
        x, y, span = sx(i * width) + pad, float(base), f"{fmt_secs(i * width)}–{fmt_secs((i + 1) * width)}"
        for k in bins.kinds:
            if n := int(bins.counts.at[i, k]):
                y -= sy(0) - sy(n)
                hint = f"{span}: {n} {k}{bins.example[k]}"
                body.append(rect("tl-ok" if k == "ok" else "tl-err", x, y, bw, sy(0) - sy(n), bins.colour[k], hint))
        if waited and (wait := float(bins.waits.iat[i])) > 0:
            hint = f"{span}: {wait:.3g} s waiting for the rate limiter"
            body.append(rect("wait-bar", x, sw(wait), bw, sw(0) - sw(wait), WAIT_COLOUR, hint))
        if retries.iat[i] > 0:
            by_type = bins.by_type
            types = ", ".join(f"{t} ×{n}" for t, n in by_type.loc[i].items() if n) if i in by_type.index else ""
            dots.append(
                f'<circle class="retry-pt" cx="{sx((i + 0.5) * width):.1f}" cy="{sy(float(retries.iat[i])):.1f}" '
                f'r="3.2"{tip(f"{span}: {int(retries.iat[i])} retries ({types})")}/>'
            )
    if retries.sum() > 0:
        path = "L".join(f"{sx((i + 0.5) * width):.1f},{sy(float(retries.iat[i])):.1f}" for i in range(bins.n))
        body += [f'<path class="retry-line" d="M{path}"/>', *dots]  # dots last: on top, for their tooltips
    return body


def _legend_items(bins: _Bins, waited: bool) -> list[tuple[str, str, str]]:
    items = [(f"{k} ({int(bins.counts[k].sum())})", bins.colour[k], "") for k in bins.kinds]
    rtypes = bins.rtypes
    types = ": " + ", ".join(f"{t} {n}" for t, n in rtypes.value_counts().items()) if len(rtypes) else ""
    items.append((f"retries ({int(bins.retries.sum())}{types})", RETRY_COLOUR, "dot"))
    items += [(f"rate-limit wait ({fmt_num(bins.waits.sum())} s)", WAIT_COLOUR, "")] if waited else []
    return items


def timeline(run: Run) -> str:
    # a request is placed when it ended — an error when it happened, not when its first attempt
    # was taken; runs written before finished_at existed fall back to the start
    at = "finished_at" if "finished_at" in run.requests and run.requests.finished_at.notna().any() else "started_at"
    req = run.requests[run.requests[at].notna()]
    if req.empty:
        return '<p class="empty">No request was recorded.</p>'
    bins = _bin(req, at)
    waited = float(bins.waits.sum()) >= WAIT_SHOWN
    L, R, T, top = 64, 28, 10, 210
    gap, low = (34, 76) if waited else (0, 0)
    base, H = T + top, T + top + gap + low + 44
    sx = Scale(0, bins.n * bins.width, L, WIDTH - R)
    sy = scale([bins.counts.sum(axis=1).max(), bins.retries.max()], base, T, n=4, whole=True)
    sw = scale([max(1.0, bins.waits.max())], base + gap + low, base + gap, n=2)  # ≥ 1 s: the limiter's µs stay flat
    body = y_axis(sy, L, WIDTH - R, fmt_num, "requests", 4)
    if waited:  # a panel of nothing but a zero line says nothing: it is drawn only when requests waited
        body += y_axis(sw, L, WIDTH - R, lambda v: f"{v:g} s", "", 2)
        body.append(text(L, base + gap - 8, "rate-limit wait (seconds, summed over the requests in the bin)", "title"))
    span_title = (
        f"time since the first request {'ended' if at == 'finished_at' else 'started'} · bins of {fmt_secs(bins.width)}"
    )
    body += [*x_axis(sx, base + gap, base + gap + low, fmt_secs, span_title), line(L, base, WIDTH - R, base, "axis")]
    body += _bars(bins, sx, sy, sw, base, waited)
    note = "" if waited else '<p class="sub">No request waited for the rate limiter.</p>'
    return (
        legend(_legend_items(bins, waited))
        + svg(H, body, "requests, errors, retries and rate-limit waits over time")
        + note
    )
