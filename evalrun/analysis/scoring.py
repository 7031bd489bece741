"""Scorers: declared in the experiment YAML (schemas in `config.scorers`), applied to every report row, stored as
`score_<name>` (0–1) and `pass_<name>` columns of results.parquet.

Scoring runs when the report is written and again, without any request, on
`evalrun score RUN_DIR`. A scorer sees the response row and the dataset row (its `data_*`
columns, as text); an error row scores null and does not pass.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from evalrun.config.scorers import ChoiceLogprobs, Custom, JsonSchemaMatch, LabelModel, PairwiseModel, ScoreModel
from evalrun.config.templates import cell_text, fill, placeholders
from evalrun.errors import ConfigError
from evalrun.run.records import Logprobs

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_PUNCT = str.maketrans("", "", string.punctuation)
logger = logging.getLogger(__name__)
JUDGES = (LabelModel, ScoreModel, PairwiseModel)


# --------------------------------------------------------------------------- applying

Score = tuple[float | None, bool]
Fn = Callable[[dict[str, Any]], Score]


def scorer_name(cfg: Any) -> str:
    return str(cfg.name or cfg.type)


def _norm(text: str, how: list[str]) -> str:
    if "case" in how:
        text = text.casefold()
    if "punctuation" in how:
        text = text.translate(_PUNCT)
    if "whitespace" in how:
        text = " ".join(text.split())
    return text


def _expected(template: str, row: dict[str, Any]) -> str:
    return str(fill(template, row))


def _extract(pattern: re.Pattern[str] | None, text: str) -> str | None:
    if pattern is None:
        return text
    m = pattern.search(text)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)


def parse_number(text: str | None) -> float | None:
    """The last number in free text ("The answer is 1,234.5." → 1234.5)."""
    if text is None:
        return None
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _bool(ok: bool) -> Score:
    return (1.0 if ok else 0.0), ok


Pattern = Callable[[dict[str, Any]], re.Pattern[str]]


def _regex(template: str | None, where: str) -> Pattern | None:
    """A scorer's regular expression, filled from the row by the one rule every template follows
    ({column}, {{ and }}) — `(?i){continent}` matches the row's continent, as `contains` does. A
    value goes in as literal text (escaped): a row's "U.S." must not match "USxS"."""
    if not template:
        return None
    try:  # checked once with stand-in values, so a broken pattern fails before any request
        re.compile(fill(template, dict.fromkeys(placeholders(template), "x")))
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {template!r}: {exc}") from None
    if not placeholders(template):
        rx = re.compile(fill(template, {}))
        return lambda data: rx
    compiled = functools.lru_cache(maxsize=4096)(re.compile)
    return lambda data: compiled(fill(template, {k: re.escape(cell_text(v)) for k, v in data.items()}))


def _compile(cfg: Any, where: str, base_dir: Path) -> Fn:
    kind = cfg.type
    pattern = _regex(getattr(cfg, "extract", None) or getattr(cfg, "pattern", None), where)
    if kind == "exact_match":

        def exact(r: dict[str, Any]) -> Score:
            got = _extract(pattern(r["data"]) if pattern else None, r["content"] or "")
            return _bool(
                got is not None
                and _norm(got, cfg.normalize) == _norm(_expected(cfg.expected, r["data"]), cfg.normalize)
            )

        return exact
    if kind in ("contains", "not_contains"):

        def contains(r: dict[str, Any]) -> Score:
            found = _norm(_expected(cfg.value, r["data"]), cfg.normalize) in _norm(r["content"] or "", cfg.normalize)
            return _bool(found if kind == "contains" else not found)

        return contains
    if kind == "regex":
        assert pattern is not None  # the schema requires `pattern`
        return lambda r: _bool(pattern(r["data"]).search(r["content"] or "") is not None)
    if kind == "numeric":

        def numeric(r: dict[str, Any]) -> Score:
            got = parse_number(_extract(pattern(r["data"]) if pattern else None, r["content"] or ""))
            want = parse_number(_expected(cfg.expected, r["data"]))
            if got is None or want is None:
                return _bool(False)
            return _bool(abs(got - want) <= max(cfg.tolerance, cfg.rel_tolerance * abs(want)))

        return numeric
    if kind == "json_valid":
        return lambda r: _bool(_json(r["content"]) is not _INVALID)
    if kind == "json_schema":
        return _json_schema(cfg)
    if kind == "choice_logprobs":
        return _choice(cfg)
    return _custom(cfg, where, base_dir)


_INVALID = object()


def _json(text: str | None) -> Any:
    if text is None:
        return _INVALID
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _INVALID


def _json_schema(cfg: JsonSchemaMatch) -> Fn:
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("the json_schema scorer needs the jsonschema package: pip install jsonschema") from None
    static = jsonschema.Draft202012Validator(cfg.schema_) if cfg.schema_ is not None else None

    def check(r: dict[str, Any]) -> Score:
        doc = _json(r["content"])
        if doc is _INVALID:
            return _bool(False)
        validator = static
        if validator is None:
            schema = _json(r["data"].get(cfg.schema_column or ""))
            if not isinstance(schema, dict):
                return _bool(False)
            validator = jsonschema.Draft202012Validator(schema)
        return _bool(validator.is_valid(doc))

    return check


def _choice(cfg: ChoiceLogprobs) -> Fn:
    options = [c.strip() for c in cfg.choices]

    def choose(r: dict[str, Any]) -> Score:
        want = _expected(cfg.expected, r["data"]).strip()
        lp: Logprobs | None = r.get("logprobs")
        has_tokens = lp is not None and len(lp.token) > 0
        probs = dict.fromkeys(options, 0.0)
        if lp is not None and has_tokens:
            for tok, logprob in [(lp.token[0], lp.logprob[0]), *lp.alternatives(0)]:
                tok = (tok or "").strip()
                if tok in probs and logprob is not None:
                    probs[tok] = max(probs[tok], math.exp(logprob))
        total = sum(probs.values())
        if total <= 0 or want not in probs:
            return None if not has_tokens else 0.0, False
        best = max(options, key=lambda o: probs[o])
        return probs[want] / total, best == want

    return choose


def _custom(cfg: Custom, where: str, base_dir: Path) -> Fn:
    module_name, func_name = cfg.function.split(":")
    folder = (base_dir / cfg.path).resolve() if cfg.path else base_dir.resolve()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot load custom scorer {cfg.function!r} (looked in {folder}): {exc}") from None

    def custom(r: dict[str, Any]) -> Score:
        # the report row as results.parquet holds it: logprobs as token objects
        response = {k: v for k, v in r.items() if k != "data"}
        if isinstance(lp := response.get("logprobs"), Logprobs):
            response["logprobs"] = lp.objects()
        out = func(r["data"], response)
        if isinstance(out, dict):
            score, passed = out.get("score"), out.get("pass")
        elif isinstance(out, tuple):
            score, passed = out
        elif isinstance(out, bool):
            score, passed = (1.0 if out else 0.0), out
        else:
            score, passed = out, None
        score = None if score is None else float(score)
        if passed is None:
            passed = score is not None and score >= cfg.threshold
        return score, bool(passed)

    return custom


class Scorers:
    """The experiment's scorers, compiled; applies them to report rows in place."""

    def __init__(self, configs: list[Any], base_dir: Path, source: str = "scorers") -> None:
        self.names: list[str] = []
        self._fns: list[Fn] = []
        self._warned: set[str] = set()
        seen: set[str] = set()
        for i, cfg in enumerate(configs):
            name = scorer_name(cfg)
            if name in seen:
                raise ConfigError(f"{source}[{i}]: two scorers are named {name!r}; give one a name:")
            seen.add(name)
            if isinstance(cfg, JUDGES):
                continue  # asked of a model: analysis.judges compiles and applies those
            self.names.append(name)
            self._fns.append(_compile(cfg, f"{source}[{i}]", base_dir))
        self.reads_logprobs = any(isinstance(c, ChoiceLogprobs | Custom) for c in configs)
        self.columns_needed = set().union(
            *(
                placeholders(
                    [
                        getattr(c, k, None) or ""
                        for k in ("expected", "value", "pattern", "extract", "reference", "rubric")
                    ]
                )
                for c in configs
            )
        ) | {c.schema_column for c in configs if getattr(c, "schema_column", None)}

    def __bool__(self) -> bool:
        return bool(self.names)

    def apply(self, rows: list[dict[str, Any]], data_prefix: str) -> None:
        """Add score_<name> and pass_<name> to every row (null / False on error rows)."""
        if not self.names:
            return
        cut = len(data_prefix)
        for row in rows:
            ok = row.get("status") == "ok"
            view = {**row, "data": {k[cut:]: v for k, v in row.items() if k.startswith(data_prefix)}} if ok else None
            for name, fn in zip(self.names, self._fns):
                score: float | None
                passed: bool
                if view is None:
                    score, passed = None, False
                else:
                    try:
                        score, passed = fn(view)
                    except Exception as exc:  # a scorer bug costs that score, not the report
                        score, passed = None, False
                        if name not in self._warned:
                            self._warned.add(name)
                            logger.warning(
                                "scorer %s failed on row %s: %s: %s (score left null)",
                                name,
                                row.get("row_id"),
                                type(exc).__name__,
                                exc,
                            )
                row[f"score_{name}"] = score
                row[f"pass_{name}"] = passed


def load_scorers(
    configs: list[Any], config_path: Path, columns: tuple[str, ...], lines: dict[Any, int] | None = None
) -> Scorers:
    """Compile the scorers and check the dataset columns they read exist."""
    where = f"{config_path}:{(lines or {}).get(('scorers',), '')}".rstrip(":")
    scorers = Scorers(configs, config_path.parent, f"{where}: scorers")
    missing = sorted(scorers.columns_needed - set(columns))
    if missing:
        raise ConfigError(
            f"{where}: scorers: the dataset has no column {missing[0]!r} (used as {{{missing[0]}}} or "
            f"schema_column); its columns: {', '.join(columns)}"
        )
    return scorers
