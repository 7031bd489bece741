"""Recognising what a prompt asks for: arithmetic, multiple choice, JSON shapes, tool calls.

Everything here is pure: text or schema in, facts or values out. behaviour.py decides
whether the simulated model gets them right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

__all__ = [
    "Arithmetic",
    "MultipleChoice",
    "find_arithmetic",
    "find_multiple_choice",
    "format_number",
    "prompt_words",
    "wants_bare_number",
]

# ---- arithmetic ---------------------------------------------------------------------------

_RUN_RE = re.compile(r"[\d\s()+\-*/×÷]+")
_HAS_OP_RE = re.compile(r"\d\s*[-+*/×÷]\s*[\d(-]")
_ARITH_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(.))")
_MAX_DIGITS = 40  # keeps products of huge literals cheap
_BARE_RE = re.compile(r"\b(?:only|just)\s+(?:the\s+)?(?:final\s+)?(?:number|numeric answer)\b|\bnumber only\b", re.I)


Number = int | Fraction  # an exact value: an int whenever it is whole


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """An integer expression found in the prompt and its exact value."""

    expression: str
    value: Number  # an int whenever exact: int arithmetic is ~10x cheaper


class _Parser:
    """Recursive descent over + - * / ( ) and unary minus; no eval."""

    __slots__ = ("pos", "tokens")

    def __init__(self, text: str) -> None:
        self.tokens: list[str | int] = []
        for m in _ARITH_TOKEN_RE.finditer(text):
            if m.group(1) is not None:
                if len(m.group(1)) > _MAX_DIGITS:
                    raise ValueError("literal too long")
                self.tokens.append(int(m.group(1)))
            elif not m.group(2).isspace():
                self.tokens.append({"×": "*", "÷": "/"}.get(m.group(2), m.group(2)))
        self.pos = 0

    def parse(self) -> int | Fraction:
        value = self._expr(0)
        if self.pos != len(self.tokens):
            raise ValueError("trailing input")
        if isinstance(value, Fraction) and value.denominator == 1:
            return value.numerator
        return value

    def _peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _expr(self, depth: int) -> int | Fraction:
        value = self._term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self, depth: int) -> int | Fraction:
        value = self._unary(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._unary(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ValueError("division by zero")
            else:
                q = Fraction(value) / rhs
                value = q.numerator if q.denominator == 1 else q
        return value

    def _unary(self, depth: int) -> int | Fraction:
        if depth > 50:
            raise ValueError("too deep")
        tok = self._peek()
        if tok == "-":
            self.pos += 1
            return -self._unary(depth + 1)
        if tok == "(":
            self.pos += 1
            value = self._expr(depth + 1)
            if self._peek() != ")":
                raise ValueError("unbalanced")
            self.pos += 1
            return value
        if isinstance(tok, int):
            self.pos += 1
            return tok
        raise ValueError("expected a number")


def _trim_parens(run: str) -> str:
    """Drop unmatched brackets at the edges, e.g. the ')' of 'A) 12 + 3'."""
    run = run.strip()
    while run and (run.count("(") != run.count(")")):
        if run.startswith(")") or (run.startswith("(") and run.count("(") > run.count(")")):
            run = run[1:].strip()
        elif run.endswith("(") or run.endswith(")"):
            run = run[:-1].strip()
        else:
            break
    return run.rstrip("+-*/×÷ ").strip()


def find_arithmetic(text: str) -> Arithmetic | None:
    """The first integer arithmetic expression in `text` that parses, with its value."""
    if len(text) > 20_000:
        text = text[-20_000:]
    for m in _RUN_RE.finditer(text):
        run = m.group()
        if not _HAS_OP_RE.search(run):
            continue
        expr = _trim_parens(run)
        try:
            return Arithmetic(expr, _Parser(expr).parse())
        except (ValueError, IndexError):
            continue
    return None


def format_number(value: int | Fraction) -> str:
    """Integers as-is; other values rounded half-up to 2 places, trailing zeros dropped."""
    if isinstance(value, int):
        return str(value)
    if value.denominator == 1:
        return str(value.numerator)
    dec = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    text = format(dec, "f").rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def wants_bare_number(text: str) -> bool:
    return _BARE_RE.search(text) is not None


# ---- multiple choice ----------------------------------------------------------------------

_OPTION_RE = re.compile(r"^[ \t]*(?:\(([A-J])\)|([A-J])[).:])[ \t]*(.*)$", re.M)
_CUE_RE = re.compile(r"\banswer\s*:|\bletter\b|\boption\b|\bchoice\b", re.I)


@dataclass(frozen=True, slots=True)
class MultipleChoice:
    """Offered option letters and their texts; `question` is the text without them."""

    letters: tuple[str, ...]
    texts: tuple[str, ...]
    question: str


def find_multiple_choice(text: str) -> MultipleChoice | None:
    letters: list[str] = []
    texts: list[str] = []
    for m in _OPTION_RE.finditer(text):
        letter = m.group(1) or m.group(2)
        if letter == chr(ord("A") + len(letters)):
            letters.append(letter)
            texts.append(m.group(3).strip())
    if len(letters) < 2 or not _CUE_RE.search(text):
        return None
    return MultipleChoice(tuple(letters), tuple(texts), _OPTION_RE.sub("", text))


def option_number(text: str) -> int | Fraction | None:
    try:
        value = Fraction(text.strip().rstrip(".").replace(",", ""))
        return value.numerator if value.denominator == 1 else value
    except (ValueError, ZeroDivisionError):
        return None


# ---- prompt words -------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W\d_]{4,}")
_STOP = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "also",
        "another",
        "answer",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "itself",
        "just",
        "more",
        "most",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "with",
        "would",
        "your",
        "please",
        "following",
        "given",
        "using",
        "value",
        "number",
        "return",
        "returns",
        "string",
        "input",
        "output",
        "based",
        "provided",
        "function",
        "specified",
        "question",
        "respond",
        "reply",
        "write",
        "give",
        "tell",
    ]
)


_NAME_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")


def proper_nouns(text: str, limit: int = 8) -> list[str]:
    """Capitalised words not starting a sentence: likely names, places (tool arguments)."""
    seen: dict[str, None] = {}
    for w in _NAME_RE.findall(text[:4000]):
        if w.lower() not in _STOP:
            seen.setdefault(w, None)
            if len(seen) >= limit:
                break
    return list(seen)


def prompt_words(text: str, limit: int = 24) -> list[str]:
    """Distinct content words of the prompt (lowercased), for echoing and filling strings."""
    seen: dict[str, None] = {}
    for w in _WORD_RE.findall(text[:4000]):
        lw = w.lower()
        if lw not in _STOP:
            seen.setdefault(lw, None)
            if len(seen) >= limit:
                break
    return list(seen)
