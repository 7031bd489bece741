"""The simulator as a judge: it recognises a grading prompt and grades like a model would.

A grading prompt has sections in square brackets — `[Question]`, `[Reference]`, `[Answer]`
(or `[Answer A]` and `[Answer B]` for a pairwise comparison) — and says on which first line
the verdict goes: one of some labels (best first), a number in a range, or `A, B or TIE`.
evalrun's own rubrics are written that way (evalrun/analysis/rubrics.py), so a judge
experiment runs offline.

The simulated judge knows the truth the way a careful reader would: an answer is right when
it contains the reference (normalised text, or the same number). It then errs with the
judge model's own error rate, drawn from a hash of what it read, so the same question gets
the same verdict in every process. A pairwise error is drawn from the unordered pair of
answers: swapping A and B mirrors the verdict, mistakes included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["JudgeTask", "find_judge", "judge_verdict"]

_SECTION = re.compile(r"^\[(Question|Reference|Answer(?: [AB])?)\]\s*$", re.M)
_LABELS = re.compile(r"one of:\s*(.+?)\s*\(best first\)", re.I)
_RANGE = re.compile(r"a number from\s*(-?\d+(?:\.\d+)?)\s*to\s*(-?\d+(?:\.\d+)?)", re.I)
_PAIRWISE = re.compile(r"\bA, B or TIE\b")
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[\w.]+")


@dataclass(frozen=True, slots=True)
class JudgeTask:
    """What a grading prompt asks: the sections it shows and the verdict format."""

    sections: dict[str, str]
    labels: tuple[str, ...]  # best first; empty for a score or pairwise judge
    scale: tuple[float, float] | None  # a score judge's range
    pairwise: bool


def find_judge(text: str) -> JudgeTask | None:
    """A grading prompt's task, or None when the text is not one."""
    marks = list(_SECTION.finditer(text))
    if not marks:
        return None
    sections = {}
    for m, nxt in zip(marks, [*marks[1:], None]):
        end = nxt.start() if nxt is not None else len(text)
        body = text[m.end() : end].strip()
        # the instructions after the last section are not part of it
        sections[m.group(1)] = body.split("\n\nReply ", 1)[0].strip()
    pairwise = bool(_PAIRWISE.search(text)) and "Answer A" in sections and "Answer B" in sections
    labels: tuple[str, ...] = ()
    scale = None
    if not pairwise:
        if (lm := _LABELS.search(text)) is not None:
            labels = tuple(x.strip() for x in lm.group(1).split(",") if x.strip())
        elif (rm := _RANGE.search(text)) is not None:
            scale = (float(rm.group(1)), float(rm.group(2)))
        if "Answer" not in sections or (len(labels) < 2 and scale is None):
            return None
    return JudgeTask(sections, labels, scale, pairwise)


def _words(text: str) -> str:
    return " ".join(w.casefold().rstrip(".") for w in _WORD.findall(text))


def _numbers(text: str) -> set[float]:
    out = set()
    for n in _NUMBER.findall(text):
        try:
            out.add(float(n.replace(",", "")))
        except ValueError:
            pass
    return out


def is_right(answer: str, reference: str) -> bool:
    """A careful reader's truth: the answer states the reference (its words, or its number)."""
    if not reference.strip():
        return bool(answer.strip())  # nothing to check against: any real answer is taken as fine
    ref_numbers = _numbers(reference)
    if ref_numbers and _WORD.fullmatch(reference.strip().replace(",", "")):
        return bool(ref_numbers & _numbers(answer))
    return _words(reference) in _words(answer)


def _u(*parts: str) -> float:
    h = blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Verdict:
    """The first line the simulated judge writes, its confidence, and a line of reasoning."""

    first: str
    p: float  # probability reported for `first` (logprobs)
    rivals: tuple[str, ...]  # the other verdicts, most likely first
    reasoning: str


def judge_verdict(task: JudgeTask, p_right: float, seed: int) -> Verdict:
    """Grade `task` as a judge that is right with probability `p_right`."""
    ref = task.sections.get("Reference", "")
    question = task.sections.get("Question", "")
    s = str(seed)
    if task.pairwise:
        a, b = task.sections["Answer A"], task.sections["Answer B"]
        ra, rb = is_right(a, ref), is_right(b, ref)
        truth = "TIE" if ra == rb else ("A" if ra else "B")
        # drawn from the unordered pair, so that swapping A and B mirrors every verdict
        low, high = sorted((a, b))
        if _u(s, question, low, high) < p_right:
            first = truth
        elif truth == "TIE":
            first = "A" if a == low else "B"  # a mistaken preference, for the same answer either way
        else:
            first = "TIE"
        why = {"A": "Answer A is better.", "B": "Answer B is better.", "TIE": "Both answers are equally good."}
        rivals = tuple(x for x in ("TIE", "A", "B") if x != first)
        return Verdict(first, 0.55 + 0.4 * p_right, rivals, why[first])
    answer = task.sections["Answer"]
    right = is_right(answer, ref)
    correct = _u(s, question, answer, ref) < p_right
    good = right == correct  # the judge's belief that the answer is good
    if task.scale is not None:
        lo, hi = task.scale
        span = hi - lo
        u = _u(s, "score", answer)
        value = hi - span * 0.2 * u if good else lo + span * 0.2 * u
        first = f"{round(value):g}" if span >= 4 else f"{value:.1f}"
        others = tuple(f"{round(v):g}" for v in (hi, lo, (lo + hi) / 2) if f"{round(v):g}" != first)
        return Verdict(first, 0.5 + 0.4 * p_right, others, "It matches the reference." if good else "It does not.")
    labels = task.labels
    first = labels[0] if good else labels[-1]
    rivals = tuple(x for x in (labels[-1] if good else labels[0], *labels[1:-1]) if x != first)
    reasoning = "The answer agrees with the reference." if good else "The answer misses the reference."
    return Verdict(first, 0.5 + 0.45 * p_right, rivals, reasoning)
