"""Error messages for the experiment file: pydantic's and PyYAML's errors turned into
`file:line: key.path: what is wrong — what is allowed`, with "did you mean" for typos.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NAME = NAME_PATTERN


def format_yaml_error(exc: yaml.YAMLError, path: Path) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    msg = f"{where}: YAML syntax error: {problem}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark and (not mark or cmark.line != mark.line):
        msg += f" ({context} that starts at line {cmark.line + 1})"  # e.g. the unclosed [ or "
    if "'\\t'" in problem:
        msg += "; indent with spaces, not tabs"
    elif "block end" in problem or "mapping values are not allowed" in problem:
        msg += "; check this line's indentation (or quote a value that contains ': ')"
    return msg


def describe_kind(value: Any) -> str:
    """What a YAML value is, in words: 'a list', 'a mapping'…"""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", type(None): "nothing"}.get(
        type(value), f"a {type(value).__name__}"
    )


# the location parts pydantic adds for union members, dict keys and validators (not data)
_PYDANTIC_TYPE_TAGS = re.compile(
    r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|\[key\]|literal\[.*\]|function-.*|[A-Z]\w*)$"
)


def _error_text(err: Any, name_pattern: str = _NAME, with_input: bool = True) -> str:
    """Pydantic's message in evalrun's words where pydantic's would be obscure."""
    etype, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if etype in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a mapping of key: value lines" + (f" (got {describe_kind(got)})" if with_input else "")
    if etype == "list_type":
        return "must be a list, e.g. [a, b] or lines starting with '- '" + (f" (got {got!r})" if with_input else "")
    if etype == "union_tag_invalid":  # e.g. a scorer's `type: regexp`
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        key, tag = str(ctx.get("discriminator", "type")).strip("'"), str(ctx.get("tag"))
        return f"unknown {key} {tag!r}{did_you_mean(tag, tags)}; allowed: {', '.join(tags)}"
    if etype == "too_short" and ctx.get("actual_length") == 0:
        return f"must not be empty: at least {ctx.get('min_length', 1)} entry needed"
    if etype == "string_pattern_mismatch" and ctx.get("pattern") == name_pattern:
        return (
            f"{got!r} is not a valid name: start with a letter or digit and use only letters, digits, '.', '_' and '-'"
        )
    msg = str(err["msg"]).removeprefix("Value error, ")
    if with_input and "input" in err and etype != "value_error" and not isinstance(got, (dict, list)):
        msg += f" (got {got!r})"
    return msg


def did_you_mean(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean {match[0]!r}?" if match else ""


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_path(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """Drop pydantic's union/validator tags from an error location, keeping the data path."""
    out: list[Any] = []
    node = raw
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
            out.append(part)
        elif last and isinstance(node, dict) and not _PYDANTIC_TYPE_TAGS.match(str(part)):
            out.append(part)  # a missing key
    return tuple(out)


def _allowed_keys(model: Any, path: tuple[Any, ...]) -> list[str]:
    """The field names allowed where an unknown key was found, by walking the model types."""
    tp: Any = model
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return []
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return []
    # where either of several models is allowed (a prompt entry), the keys of all of them
    models = _union_models(tp) or [_unwrap(tp)]
    return [
        f
        for m in models
        if isinstance(m, type) and issubclass(m, BaseModel)
        for f, info in m.model_fields.items()
        if not info.exclude  # a field kept only to say "not here" is no suggestion
    ]


def _union_models(tp: Any) -> list[Any]:
    """The models a union can be, its members possibly Annotated (tagged); [] if not a union."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) is not Union and str(get_origin(tp)) != "<class 'types.UnionType'>":
        return []
    members = [get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(tp)]
    return [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or str(origin) == "<class 'types.UnionType'>":
            models = _union_models(tp)
            if not models:
                return tp
            tp = models[0]
        else:
            return tp


def _located(exc: ValidationError, raw: Any) -> list[tuple[Any, tuple[Any, ...], bool]]:
    """(error, its path in the data, whether pydantic's location was tagged), one per place."""
    errors = []
    for err in exc.errors():
        data_path = _data_path(tuple(err["loc"]), raw)
        # a shorter data path: the location had pydantic's tags for union members or dict keys
        errors.append((err, data_path, len(data_path) < len(err["loc"])))
    # a union (e.g. stop: str | list[str]) reports once per member: keep the deepest, most precise one
    return [
        (err, dp, tagged)
        for err, dp, tagged in errors
        if not (tagged and any(len(o) > len(dp) and o[: len(dp)] == dp for _, o, _ in errors))
    ]


def _set_origin(data_path: tuple[Any, ...], overridden: dict[tuple[str, ...], str] | None) -> str | None:
    """The --set that wrote this value (or a part of it), if one did."""
    return next(
        (
            item
            for key, item in (overridden or {}).items()
            if data_path and (data_path[: len(key)] == key or key[: len(data_path)] == data_path)
        ),
        None,
    )


def _what_is_wrong(err: Any, data_path: tuple[Any, ...], schema: type[BaseModel], alternatives: list[Any]) -> str:
    """The message of one error: an unknown key and what is allowed, a missing key, the union's
    members that all failed here, or pydantic's own words."""
    if err["type"] == "extra_forbidden":
        key = str(data_path[-1]) if data_path else "?"
        allowed = _allowed_keys(schema, data_path[:-1])
        if key == "api_key":
            return "a key must not be written in the config: set it in an environment variable and name it with api_key_env"
        msg = f"unknown key{did_you_mean(key, allowed)}"
        if allowed:
            msg += f"; allowed here: {', '.join(allowed)}"
        return msg
    if err["type"] == "missing":
        return "required key is missing"
    if len(alternatives) > 1:
        msg = "; or ".join(dict.fromkeys(_error_text(e, with_input=False) for e in alternatives))
        if not isinstance(err.get("input"), (dict, list)):
            msg += f" (got {err.get('input')!r})"
        return msg
    return _error_text(err)


def format_validation(
    exc: ValidationError,
    schema: type[BaseModel],
    path: Path,
    raw: Any,
    lines: dict[tuple[Any, ...], int],
    overridden: dict[tuple[str, ...], str] | None = None,
) -> str:
    """Every pydantic error as `file:line: key.path: what is wrong and what is allowed`."""
    errors = _located(exc, raw)
    typos = {  # unknown keys that are a typo of a missing one explain that one too
        dp[:-1] + (m,): dp
        for err, dp, _ in errors
        if err["type"] == "extra_forbidden" and dp
        for m in difflib.get_close_matches(str(dp[-1]), _allowed_keys(schema, dp[:-1]), n=1, cutoff=0.6)
    }
    alternatives: dict[tuple[Any, ...], list[Any]] = {}  # union members failing at the same place
    for err, data_path, tagged in errors:
        if tagged and err["type"] not in ("missing", "extra_forbidden"):
            alternatives.setdefault(data_path, []).append(err)
    messages: list[str] = []
    for err, data_path, _tagged in errors:
        if err["type"] == "missing" and data_path in typos:
            continue
        origin = _set_origin(data_path, overridden)
        line = None if origin else (lines.get(data_path) or lines.get(data_path[:-1]))
        where = f"{path}:{line}" if line else str(path)
        msg = _what_is_wrong(err, data_path, schema, alternatives.get(data_path, []))
        if origin:
            msg += f" (from --set {origin})"
        messages.append(f"{where}: {dotted(data_path) or '(top level)'}: {msg}")
    unique = list(dict.fromkeys(messages))
    more = f"\n(and {len(unique) - 8} more)" if len(unique) > 8 else ""
    return "\n".join(unique[:8]) + more
