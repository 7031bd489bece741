"""Structured answers: an instance for a JSON schema (response_format) and the tool a prompt
asks for. Pure, like tasks.py: schema or tools in, values out."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from evalrun.sim.tasks import prompt_words
from evalrun.sim.wire import FunctionDef, JsonSchema, ToolChoice, ToolDef

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
    root: JsonSchema
    placed: str | None = None  # "raw" (a JSON number) or "quoted" (inside a JSON string)
    budget: int = 5000  # values left to generate: hostile schemas must stay cheap


def _word(ctx: SchemaContext) -> str:
    pool = ctx.words or _FILLER
    return pool[ctx.rng.randrange(len(pool))]


def _is_answer_field(name: str) -> bool:
    lname = name.lower()
    return any(a in lname for a in _ANSWER_NAMES)


def _resolve(schema: JsonSchema, ctx: SchemaContext, depth: int) -> JsonSchema:
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


def _schema_type(schema: JsonSchema) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if t is None and "properties" in schema:
        return "object"
    return t if isinstance(t, str) else None


def _num(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bounds(schema: JsonSchema, step: float) -> tuple[float, float]:
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
    # the answer literal, when this field is where it goes
    answer = ctx.answer if not ctx.placed and _is_answer_field(name) else None
    if kind == "object":
        return _object_instance(schema, ctx, depth)
    if kind == "array":
        return _array_instance(schema, ctx, depth)
    if kind in ("number", "integer"):
        return _number_instance(schema, ctx, kind, answer)
    if kind == "boolean":
        return ctx.rng.random() < 0.5
    if kind == "null":
        return None
    # strings (and untyped schemas)
    if answer is not None:
        ctx.placed = "quoted"
        return ANSWER_SLOT
    return _string_instance(schema, ctx)


def _object_instance(schema: JsonSchema, ctx: SchemaContext, depth: int) -> dict[str, object]:
    props = schema.get("properties")
    out: dict[str, object] = {}
    if isinstance(props, dict):
        for key, sub in props.items():
            out[key] = instance_for_schema(sub, ctx, depth + 1, key)
    return out


def _array_instance(schema: JsonSchema, ctx: SchemaContext, depth: int) -> list[object]:
    min_items, max_items = schema.get("minItems"), schema.get("maxItems")
    fewest = min_items if isinstance(min_items, int) else 1
    most = max_items if isinstance(max_items, int) else max(fewest, 3)
    count = max(fewest, min(most, 1 + ctx.rng.randrange(3)))
    return [instance_for_schema(schema.get("items"), ctx, depth + 1) for _ in range(count)]


def _number_instance(schema: JsonSchema, ctx: SchemaContext, kind: str, answer: str | None) -> object:
    """A number within the schema's bounds, or the answer's slot when a number answer goes here."""
    if answer is not None and ctx.answer_is_number and (kind == "number" or "." not in answer):
        ctx.placed = "raw"
        return ANSWER_SLOT
    lo, hi = _bounds(schema, 1 if kind == "integer" else 0.01)
    if kind == "integer":
        lo_i, hi_i = math.ceil(lo), math.floor(hi)
        return ctx.rng.randint(lo_i, max(lo_i, hi_i))
    return round(lo + (hi - lo) * ctx.rng.random(), 2) if hi > lo else lo


def _string_instance(schema: JsonSchema, ctx: SchemaContext) -> str:
    """A string of the schema's format, else prompt names or words fitted to min/maxLength."""
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
    min_len = schema.get("minLength", 0)
    max_len = schema.get("maxLength")
    if isinstance(min_len, int) and min_len > 10_000:
        raise SchemaTooComplex("the JSON schema asks for too long a string to simulate")
    if isinstance(min_len, int) and len(text) < min_len:
        text = (text + " ") * (min_len // (len(text) + 1) + 1)
    if isinstance(max_len, int):
        text = text[:max_len]
    return text


# ---- tools --------------------------------------------------------------------------------


def _mentions(fn: FunctionDef, text_lower: str, words: set[str]) -> bool:
    name = fn.get("name", "")
    if name and (name.lower() in text_lower or name.lower().replace("_", " ") in text_lower):
        return True
    desc = fn.get("description")
    if isinstance(desc, str):
        return any(w in words for w in prompt_words(desc, limit=40) if len(w) >= 5)
    return False


def pick_tool(
    tools: list[ToolDef], tool_choice: ToolChoice | None, last_user: str, rng: random.Random
) -> FunctionDef | None:
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
