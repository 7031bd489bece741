"""Formatting for the page: escaping (every value is untrusted), numbers, money, times, and
the table markup shared by the summary, the compare view and the charts' captions."""

from __future__ import annotations

import html
import math
from datetime import datetime
from typing import Any

from evalrun.analysis.compare import ANSWER_CHARS
from evalrun.run.store import Manifest


def price_label(manifest: Manifest) -> tuple[str, str]:
    """(currency, where the prices came from): the manifest's `prices`, else the config's."""
    if manifest.prices is not None:
        p = manifest.prices
        currency, source, as_of = p.currency, p.source or (p.model_extra and p.model_extra.get("file")), p.as_of
    else:
        info = (manifest.config or {}).get("prices") or {}  # the YAML's: a file name or a table
        info = {"file": info} if isinstance(info, str) else info
        currency, source, as_of = info.get("currency"), info.get("source") or info.get("file"), info.get("as_of")
    label = str(source or "not recorded in the manifest")
    return str(currency or "USD"), label + (f", as of {as_of}" if as_of else "")


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def is_missing(v: Any) -> bool:
    try:
        return v is None or bool(v != v)  # NaN and pd.NA
    except TypeError:
        return True


def fmt_val(v: Any) -> str:
    if is_missing(v):
        return "–"
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def fmt_num(v: Any, digits: int = 3) -> str:
    """Whole numbers as they are (1,234), others to three significant figures (0.00123, 12.3)."""
    if is_missing(v):
        return "–"
    v = float(v)
    if v == round(v) or abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    return f"{v:,.{max(0, digits - 1 - math.floor(math.log10(abs(v))))}f}"


def fmt_pct(v: Any, d: int = 1) -> str:
    return "–" if is_missing(v) else f"{float(v) * 100:.{d}f}%"


def fmt_signed(v: Any, fmt: str) -> str:
    return "–" if is_missing(v) else format(float(v), "+" + fmt)


def fmt_money(v: Any, currency: str, tick: bool = False) -> str:
    if is_missing(v):
        return "–"
    text = f"{float(v):,.2f}" if abs(float(v)) >= 10 else fmt_num(v)
    text = text.rstrip("0").rstrip(".") if tick and "." in text else text  # an axis says $0.0005, not $0.000500
    return f"${text}" if currency == "USD" else f"{text} {currency}"


def fmt_secs(v: float) -> str:
    """Elapsed time for an axis: 0.25 s, 42 s, 3:20, 1:02:00."""
    if v < 60:
        return f"{v:g} s" if v >= 1 or v == 0 else f"{v:.3g} s"
    m, s = divmod(round(v), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


def parse_time(iso: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None


def shorten(v: Any) -> str:
    s = "" if is_missing(v) else str(v)
    return s[:ANSWER_CHARS] + ("…" if len(s) > ANSWER_CHARS else "")


def td(text: str, sort: Any = None, cls: str = "num", extra: str = "") -> str:
    """A table cell of escaped `text`; the script sorts by `sort` (blank = no value, kept last)."""
    key = sort if isinstance(sort, str) else "" if is_missing(sort) else repr(float(sort))
    return f'<td class="{cls}" data-sort="{esc(key)}"{extra}>{text}</td>'


def html_table(table_id: str, heads: list[tuple[str, str]], rows: list[str]) -> str:
    ths = "".join(f'<th class="{cls}">{esc(h)}</th>' for h, cls in heads)
    return (
        f'<div class="table-wrap"><table class="sortable" id="{table_id}"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
