"""Reading a judge's answer: the verdict where the rubric asks for it, or why there is none.

Every rubric (rubrics.py) asks for the verdict alone on the first line, so the first non-blank
line is the only place read (markdown marks, quotes and a closing period stripped). On it:

- an optional key before a colon is passed over: "Verdict: CORRECT", "Correctness: INCORRECT";
- a label judge's verdict is a label as a whole word (any case) at the start of the line or
  right after that key: "INCORRECT.", "correct: yes" → CORRECT. A line naming two different
  labels ("CORRECT or INCORRECT", "Correct: INCORRECT") is *conflicting*, one naming none
  where the verdict goes ("NOT CORRECT", "The answer is CORRECT") *unparseable*;
- a score judge's verdict is a plain number: digits with an optional decimal point ("7.5"),
  optionally "/HI" or "out of HI" when HI is the rubric's top, or "%" when the range is
  0–100. A comma in the number ("7,5", "1,234.5", "1.234,5") is refused: decimal comma or
  thousands separator cannot be told apart, and no score range needs a thousands separator.
  A second number on the line ("8 or 9") is conflicting; a number outside the range is refused.

Whatever is refused leaves the verdict ungraded with a reason (`Reading.problem`), which
becomes the row's judge_error_<name> column: a score is never guessed.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_MARKS = "*#_`>\"' "
# "Verdict:" / "Final grade:" — a short key of words before a colon
_KEY = re.compile(r"^[^\W\d][\w ()-]{0,40}?:\s*")
_NUMBER_TOKEN = re.compile(r"^[-+]?[\d.,]*\d[\d.,]*")
_PLAIN = re.compile(r"^[-+]?(?:\d+(?:\.\d+)?|\.\d+)$")
_SCALE = re.compile(r"^\s*(?:(?P<pct>%)|(?:/|out\s+of\b)\s*(?P<of>[-+]?[\d.,]+))?", re.I)
LOGPROB_SLACK = 1e-6  # a log probability a hair above 0 is rounding; more is not a probability


@dataclass(frozen=True, slots=True)
class Reading:
    """A verdict read from a judge's answer, or the reason there is none."""

    value: str | float | None
    problem: str | None = None


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip().strip(_MARKS).rstrip(".").strip(_MARKS)
        if line:
            return line
    return ""


def _places(line: str) -> list[str]:
    """Where the verdict may start: the line itself, then what follows a key and a colon."""
    m = _KEY.match(line)
    return [line, line[m.end() :].strip(_MARKS)] if m else [line]


@functools.lru_cache(maxsize=64)
def _label_rx(labels: tuple[str, ...]) -> re.Pattern[str]:
    # longest first, so that "MOSTLY CORRECT" is one label, not "CORRECT" after a word
    alternatives = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    return re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.I)


def read_label(text: str | None, labels: Sequence[str]) -> Reading:
    """The label the first line gives (as spelled in `labels`)."""
    line = first_line(text)
    rx = _label_rx(tuple(labels))
    spelled = {x.upper(): x for x in labels}
    for place in _places(line):
        if rx.match(place) is None:
            continue
        named = sorted({m.upper() for m in rx.findall(place)})
        if len(named) > 1:
            return Reading(None, f"judge_conflicting: first line {line!r} names {' and '.join(named)}")
        return Reading(spelled[named[0]])
    return Reading(None, f"judge_unparseable: first line {line!r}, expected one of {', '.join(labels)}")


def read_score(text: str | None, lo: float, hi: float) -> Reading:
    """The number the first line gives, within [lo, hi]."""
    line = first_line(text)
    want = f"expected {lo:g}–{hi:g}"
    for place in _places(line):
        token = _NUMBER_TOKEN.match(place)
        if token is None:
            continue
        number, rest = token.group(0), place[token.end() :]
        if "," in number:
            return Reading(
                None, f"judge_locale_number: first line {line!r}: a comma in {number!r} is ambiguous; {want} like 7.5"
            )
        if not _PLAIN.match(number) or rest[:1].isalnum():  # "1.2.3", "8th", "10x"
            return Reading(None, f"judge_unparseable: first line {line!r}, {want}")
        scale = _SCALE.match(rest)
        assert scale is not None  # every group is optional
        if scale.group("pct") and (lo, hi) != (0, 100):
            return Reading(None, f"judge_unparseable: first line {line!r} is a percentage, {want}")
        if scale.group("of") and _as_float(scale.group("of")) != hi:
            return Reading(None, f"judge_unparseable: first line {line!r} is on another scale, {want}")
        if re.search(r"\d", rest[scale.end() :]):
            return Reading(None, f"judge_conflicting: first line {line!r} has more than one number, {want}")
        grade = float(number)
        if not lo <= grade <= hi:
            return Reading(None, f"judge_out_of_range: first line {line!r}, {want}")
        return Reading(grade)
    return Reading(None, f"judge_unparseable: first line {line!r}, {want}")


def _as_float(text: str) -> float | None:
    return float(text) if _PLAIN.match(text) else None


def label_weights(
    first_token: Sequence[tuple[str, float]], labels: Sequence[str]
) -> tuple[dict[str, float], str | None]:
    """G-Eval: label → probability, from the first token's alternatives that name a label, or
    the reason they cannot be used. A log probability must be a finite number ≤ 0 (a hair
    above is rounding, taken as 0; -inf is probability 0): a server that sends +1000 or NaN
    there has not sent a probability, and exp(+1000) would overflow."""
    spelled = {x.upper(): x for x in labels}
    weights: dict[str, float] = {}
    for tok, lp in first_token:
        key = tok.strip().strip(_MARKS).upper()
        if key not in spelled or spelled[key] in weights:
            continue
        if math.isnan(lp) or lp > LOGPROB_SLACK:
            return {}, f"judge_bad_logprobs: the first token {tok!r} has logprob {lp!r}, not a log probability (≤ 0)"
        weights[spelled[key]] = math.exp(min(lp, 0.0))
    return weights, None
