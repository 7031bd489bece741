"""Recognising what a prompt asks for: arithmetic, multiple choice, JSON shapes, tool calls.

Everything here is pure: text or schema in, facts or values out. behaviour.py decides
whether the simulated model gets them right.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

__all__ = [
    "Arithmetic",
    "MultipleChoice",
    "SchemaContext",
    "SchemaTooComplex",
    "find_arithmetic",
    "find_multiple_choice",
    "format_number",
    "instance_for_schema",
    "pick_tool",
    "prompt_words",
    "wants_bare_number",
]

# ---- arithmetic ---------------------------------------------------------------------------

_RUN_RE = re.compile(r"[\d\s()+\-*/×÷]+")
_HAS_OP_RE = re.compile(r"\d\s*[-+*/×÷]\s*[\d(-]")
_ARITH_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(.))")
_MAX_DIGITS = 40  # keeps products of huge literals cheap
_BARE_RE = re.compile(r"\b(?:only|just)\s+(?:the\s+)?(?:final\s+)?(?:number|numeric answer)\b|\bnumber only\b", re.I)


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """An integer expression found in the prompt and its exact value."""

    expression: str
    value: int | Fraction  # an int whenever exact: int arithmetic is ~10x cheaper


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


# ---- JSON schema instances ----------------------------------------------------------------

ANSWER_SLOT = "\x00answer\x00"  # placeholder the caller swaps for the answer token
_ANSWER_NAMES = ("answer", "result", "value", "solution", "number", "total", "choice", "letter", "option")
_FILLER = ("alpha", "delta", "sigma", "orbit", "maple", "river", "quartz", "ember")


class SchemaTooComplex(ValueError):
    """A schema whose smallest instance is too big to build per request (answered as 400)."""


@dataclass(slots=True)
class SchemaContext:
    """What an instance generator may use: randomness, prompt words, an answer to place."""

    rng: random.Random
    words: list[str]
    names: list[str]
    answer: str | None  # the answer literal to place in an answer-named field, if any
    answer_is_number: bool
    root: dict
    placed: str | None = None  # "raw" (a JSON number) or "quoted" (inside a JSON string)
    budget: int = 5000  # values left to generate: hostile schemas must stay cheap


def _word(ctx: SchemaContext) -> str:
    pool = ctx.words or _FILLER
    return pool[ctx.rng.randrange(len(pool))]


def _is_answer_field(name: str) -> bool:
    lname = name.lower()
    return any(a in lname for a in _ANSWER_NAMES)


def _resolve(schema: dict, ctx: SchemaContext, depth: int) -> dict:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        node: object = ctx.root
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return _resolve(node, ctx, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            merged = {k: v for k, v in schema.items() if k != key}
            merged.update(_resolve(options[0], ctx, depth + 1))
            return merged
    return schema


def _schema_type(schema: dict) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if t is None and "properties" in schema:
        return "object"
    return t if isinstance(t, str) else None


def _num(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bounds(schema: dict, step: float) -> tuple[float, float]:
    lo = _num(schema.get("minimum"))
    if lo is None:
        ex = _num(schema.get("exclusiveMinimum"))
        lo = ex + step if ex is not None else 0
    hi = _num(schema.get("maximum"))
    if hi is None:
        ex = _num(schema.get("exclusiveMaximum"))
        hi = ex - step if ex is not None else lo + 100
    return lo, max(lo, hi)


def instance_for_schema(schema: object, ctx: SchemaContext, depth: int = 0, name: str = "") -> object:
    """A value that validates against `schema` (the common subset of JSON Schema)."""
    ctx.budget -= 1
    if ctx.budget < 0:
        raise SchemaTooComplex("the JSON schema asks for too large an instance to simulate")
    if not isinstance(schema, dict) or depth > 12:
        return _word(ctx)
    schema = _resolve(schema, ctx, depth)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        if ctx.answer is not None and not ctx.placed and ctx.answer in enum and _is_answer_field(name):
            ctx.placed = "quoted"
            return ANSWER_SLOT
        return enum[ctx.rng.randrange(len(enum))]
    kind = _schema_type(schema)
    wants_answer = ctx.answer is not None and not ctx.placed and _is_answer_field(name)
    if kind == "object":
        props = schema.get("properties")
        out: dict[str, object] = {}
        if isinstance(props, dict):
            for key, sub in props.items():
                out[key] = instance_for_schema(sub, ctx, depth + 1, key)
        return out
    if kind == "array":
        lo = schema.get("minItems", 1) if isinstance(schema.get("minItems"), int) else 1
        hi = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else max(lo, 3)
        count = max(lo, min(hi, 1 + ctx.rng.randrange(3)))
        return [instance_for_schema(schema.get("items"), ctx, depth + 1) for _ in range(count)]
    if kind in ("number", "integer"):
        if wants_answer and ctx.answer_is_number and (kind == "number" or "." not in ctx.answer):
            ctx.placed = "raw"
            return ANSWER_SLOT
        lo, hi = _bounds(schema, 1 if kind == "integer" else 0.01)
        if kind == "integer":
            lo_i, hi_i = math.ceil(lo), math.floor(hi)
            return ctx.rng.randint(lo_i, max(lo_i, hi_i))
        return round(lo + (hi - lo) * ctx.rng.random(), 2) if hi > lo else lo
    if kind == "boolean":
        return ctx.rng.random() < 0.5
    if kind == "null":
        return None
    # strings (and untyped schemas)
    if wants_answer:
        ctx.placed = "quoted"
        return ANSWER_SLOT
    fmt = schema.get("format")
    if fmt == "date":
        return "2025-10-10"
    if fmt == "date-time":
        return "2025-10-10T01:59:44Z"
    if fmt == "email":
        return f"{_word(ctx)}@example.com"
    if ctx.names and ctx.rng.random() < 0.7:
        text = ctx.names[ctx.rng.randrange(len(ctx.names))]
    else:
        text = " ".join(_word(ctx) for _ in range(1 + ctx.rng.randrange(3)))
    lo = schema.get("minLength", 0)
    hi = schema.get("maxLength")
    if isinstance(lo, int) and lo > 10_000:
        raise SchemaTooComplex("the JSON schema asks for too long a string to simulate")
    if isinstance(lo, int) and len(text) < lo:
        text = (text + " ") * (lo // (len(text) + 1) + 1)
    if isinstance(hi, int):
        text = text[:hi]
    return text


# ---- tools --------------------------------------------------------------------------------


def _mentions(fn: dict, text_lower: str, words: set[str]) -> bool:
    name = fn.get("name", "")
    if name and (name.lower() in text_lower or name.lower().replace("_", " ") in text_lower):
        return True
    desc = fn.get("description")
    if isinstance(desc, str):
        return any(w in words for w in prompt_words(desc, limit=40) if len(w) >= 5)
    return False


def pick_tool(tools: list, tool_choice: object, last_user: str, rng: random.Random) -> dict | None:
    """The function definition the model calls, or None for a text answer."""
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        return next((f for f in functions if f.get("name") == wanted), None)
    text_lower = last_user.lower()
    words = set(prompt_words(last_user, limit=200))
    mentioned = next((f for f in functions if _mentions(f, text_lower, words)), None)
    if mentioned is not None or tool_choice != "required":
        return mentioned
    return functions[rng.randrange(len(functions))]
