"""SVG primitives for the charts: scales with nice ticks, axes, text, legends."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evalrun.report.format import esc, is_missing

WIDTH = 960  # every chart's viewBox width; the page scales it


def _nice_step(span: float, n: int, whole: bool = False) -> float:
    mag = 10 ** math.floor(math.log10((span or 1) / n))
    step = next(m * mag for m in ((1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)) if m * mag >= (span or 1) / n * 0.999)
    return max(step, 1) if whole else step  # counts get whole-number ticks


@dataclass(frozen=True)
class Scale:
    """Data → pixels, linear or log10."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False
    whole: bool = False

    def __call__(self, v: float) -> float:
        f = math.log10 if self.log else float
        lo, hi = f(self.lo), f(self.hi)
        return self.a + (f(max(v, self.lo) if self.log else v) - lo) / ((hi - lo) or 1) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            out = [
                d * 10.0**k
                for k in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
                for d in (1, 2, 5)
                if self.lo <= d * 10.0**k <= self.hi
            ]
            return [t for t in out if f"{t:e}".startswith("1")] if len(out) > 9 else out
        step = _nice_step(self.hi - self.lo, n, self.whole)
        return [round(self.lo + i * step, 12) for i in range(int((self.hi - self.lo) / step + 1e-6) + 1)]


def scale(
    values: Any, a: float, b: float, *, zero: bool = True, log_ratio: float = 0, n: int = 5, whole: bool = False
) -> Scale:
    """A scale over `values` with round ends, from 0 (`zero`) or padded around the data; log10
    when max/min exceeds `log_ratio` (latencies and prices span decades)."""
    vals = [float(v) for v in values if not is_missing(v)] or [0.0, 1.0]
    lo, hi = min(vals), max(vals)
    if log_ratio and lo > 0 and hi / lo > log_ratio:
        return Scale(lo / 1.5, hi * 1.5, a, b, log=True)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = (min(lo, 0.0), hi if hi > lo else hi + pad) if zero else (lo - pad, hi + pad)
    step = _nice_step(hi - lo, n, whole)
    return Scale(math.floor(lo / step) * step, math.ceil(hi / step - 1e-9) * step, a, b, whole=whole)


def svg(h: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {h:.0f}" role="img" aria-label="{esc(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def text(x: float, y: float, s: str, cls: str = "", anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}"{extra}>{esc(s)}</text>'


def line(x1: float, y1: float, x2: float, y2: float, cls: str, extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"{extra}/>'


def rect(cls: str, x: float, y: float, w: float, h: float, fill: str, hint: str = "", extra: str = "") -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"'
        f"{tip(hint) if hint else ''}{extra}/>"
    )


def tip(text: str) -> str:
    return f' data-tip="{esc(text)}"'


def x_axis(sx: Scale, top: float, bottom: float, fmt: Any, title: str = "") -> list[str]:
    out = [
        s
        for t in sx.ticks()
        for s in (line(sx(t), top, sx(t), bottom, "grid"), text(sx(t), bottom + 16, fmt(t), anchor="middle"))
    ]
    out.append(line(sx.a, bottom, sx.b, bottom, "axis"))
    return out + ([text((sx.a + sx.b) / 2, bottom + 36, title, "title", "middle")] if title else [])


def y_axis(sy: Scale, left: float, right: float, fmt: Any, title: str = "", n: int = 5) -> list[str]:
    out = [
        s
        for t in sy.ticks(n)
        for s in (line(left, sy(t), right, sy(t), "grid"), text(left - 8, sy(t) + 4, fmt(t), anchor="end"))
    ]
    mid = (sy.a + sy.b) / 2
    return out + ([text(14, mid, title, "title", "middle", f' transform="rotate(-90 14 {mid:.1f})"')] if title else [])


def text_width(s: str, size: float = 11.5) -> float:
    return len(s) * size * 0.57  # a sans-serif glyph's average advance: enough to avoid overlaps


def cut(s: str, width: float, size: float = 12.5) -> str:
    keep = int(width / (size * 0.57))
    return s if len(s) <= keep else s[: max(1, keep - 1)] + "…"


def legend(items: list[tuple[str, str, str]]) -> str:
    """(label, colour, shape class) → an HTML legend: it wraps, unlike one drawn in SVG."""
    spans = (f'<span><i class="{cls}" style="background:{c}"></i>{esc(label)}</span>' for label, c, cls in items)
    return f'<div class="legend">{"".join(spans)}</div>'
