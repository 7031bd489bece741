"""Prices and the cost of each request.

The rules that peers get wrong, made explicit:
- cached tokens are part of `prompt_tokens` and are billed only at the cached rate;
- reasoning tokens are part of `completion_tokens`: billed once, at the reasoning price
  (default: the output price), and reported apart (`cost_reasoning`) from visible output;
- tiers by prompt length: the request's own `prompt_tokens` picks the tier;
- audio prompt tokens at the audio price when one is given;
- missing usage → null cost, never a guess; usage on an error row is costed too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalrun.config.diagnostics import format_validation, format_yaml_error
from evalrun.errors import ConfigError

PER = 1_000_000
COST_COLUMNS = ("cost_input", "cost_cached", "cost_output", "cost_reasoning", "cost_total")


class Rates(BaseModel):
    """Prices per 1M tokens for one tier."""

    model_config = ConfigDict(extra="forbid")
    max_prompt_tokens: int | None = Field(None, ge=1)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0, description="default: the input price")
    reasoning: float | None = Field(None, ge=0, description="default: the output price")
    audio_input: float | None = Field(None, ge=0, description="default: the input price")


class ModelPrice(BaseModel):
    """A model's prices: flat rates, or tiers by prompt length."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    input: float | None = Field(None, ge=0)
    output: float | None = Field(None, ge=0)
    cached_input: float | None = Field(None, ge=0)
    reasoning: float | None = Field(None, ge=0)
    audio_input: float | None = Field(None, ge=0)
    tiers: list[Rates] | None = None

    @model_validator(mode="after")
    def _flat_or_tiers(self) -> ModelPrice:
        flat = self.input is not None or self.output is not None
        if flat == bool(self.tiers):
            raise ValueError("give input and output prices, or tiers (not both)")
        if flat and (self.input is None or self.output is None):
            raise ValueError("input and output prices are both needed")
        if self.tiers:
            bounds = [t.max_prompt_tokens for t in self.tiers]
            if any(b is None for b in bounds[:-1]) or bounds != sorted(bounds, key=lambda b: b or float("inf")):
                raise ValueError("tiers go by increasing max_prompt_tokens; only the last may have none")
        return self

    def rates(self, prompt_tokens: int) -> Rates:
        if not self.tiers:
            assert self.input is not None and self.output is not None  # _flat_or_tiers made sure
            return Rates(
                max_prompt_tokens=None,
                input=self.input,
                output=self.output,
                cached_input=self.cached_input,
                reasoning=self.reasoning,
                audio_input=self.audio_input,
            )
        for tier in self.tiers:
            if tier.max_prompt_tokens is None or prompt_tokens <= tier.max_prompt_tokens:
                return tier
        return self.tiers[-1]


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: str = "USD"
    as_of: str | None = None
    models: dict[str, ModelPrice] = Field(default_factory=dict)


class PricesConfig(BaseModel):
    """The experiment's `prices:` — a file, and/or models inline (they win over the file)."""

    model_config = ConfigDict(extra="forbid")
    file: str | None = None
    currency: str | None = None
    models: dict[str, ModelPrice] = Field(default_factory=dict)


@dataclass(frozen=True)
class Pricing:
    """The resolved table for a run."""

    table: PriceTable
    source: str  # where it came from, for the manifest

    @property
    def currency(self) -> str:
        return self.table.currency

    def known(self, model: str) -> bool:
        return model in self.table.models

    def cost(self, model: str, usage: Mapping[str, Any]) -> dict[str, float | None]:
        """Cost columns for one request, from its usage columns (a report row)."""
        price = self.table.models.get(model)
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if price is None or (prompt is None and completion is None):
            return dict.fromkeys(COST_COLUMNS)
        r = price.rates(prompt or 0)
        cached = min(usage.get("cached_tokens") or 0, prompt or 0)
        audio = (usage.get("prompt_audio_tokens") or 0) if r.audio_input is not None else 0
        reasoning = min(usage.get("reasoning_tokens") or 0, completion or 0)
        cost = {
            "cost_input": None
            if prompt is None
            else (max(0, prompt - cached - audio) * r.input + audio * (r.audio_input or 0)) / PER,
            "cost_cached": None
            if prompt is None
            else cached * (r.input if r.cached_input is None else r.cached_input) / PER,
            "cost_output": None if completion is None else (completion - reasoning) * r.output / PER,
            "cost_reasoning": None
            if completion is None
            else reasoning * (r.output if r.reasoning is None else r.reasoning) / PER,
        }
        parts = [v for v in cost.values() if v is not None]
        cost["cost_total"] = sum(parts) if len(parts) == 4 else None
        return cost

    def worst_case(self, model: str, prompt_tokens: int, max_output: int) -> float | None:
        """Cost if every output token is spent (no cache): what the budget holds for a request
        until its model has answered once."""
        price = self.table.models.get(model)
        if price is None:
            return None
        r = price.rates(prompt_tokens)
        out = max(r.output, r.reasoning or 0)
        return (prompt_tokens * r.input + max_output * out) / PER


def _key_lines(node: yaml.Node | None, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Key path → line of a price file, so an error names the line of the typo."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _key_lines(value, path + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[path + (i,)] = value.start_mark.line + 1
            _key_lines(value, path + (i,), out)


def _read_table(path: Path) -> PriceTable:
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: price table not found (prices:)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(format_yaml_error(exc, path) + " (in the price table)") from None
    try:
        return PriceTable.model_validate(data or {})
    except ValidationError as exc:
        lines: dict[tuple[Any, ...], int] = {}
        _key_lines(yaml.compose(text), (), lines)
        raise ConfigError(format_validation(exc, PriceTable, path, data, lines)) from None


DEFAULT_FILE = "prices.yaml"


def load_pricing(prices: PricesConfig | str | None, config_path: Path) -> Pricing | None:
    """The experiment's prices: `prices:` (a file or a mapping), else prices.yaml beside the
    config, else none (cost columns stay null)."""
    if isinstance(prices, str):
        prices = PricesConfig(file=prices)
    base: PriceTable | None = None
    source = ""
    file = prices.file if prices else None
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else config_path.parent / file
        base, source = _read_table(path), str(path)
    elif (config_path.parent / DEFAULT_FILE).is_file():
        path = config_path.parent / DEFAULT_FILE
        base, source = _read_table(path), str(path)
    if prices and prices.models:
        merged = dict(base.models) if base else {}
        merged.update(prices.models)
        base = PriceTable(
            currency=prices.currency or (base.currency if base else "USD"),
            as_of=base.as_of if base else None,
            models=merged,
        )
        source = (source + " + " if source else "") + f"{config_path} prices.models"
    if base is None:
        return None
    return Pricing(base, source)
