"""Grid expansion: models × grid axes (minus exclude, plus include) × prompts → cells; then
cells × dataset rows × repeats → a lazy stream of `RequestSpec`s with stable ids.

The cell list is small (it does not grow with the dataset) and is built eagerly so that every
cell's parameters can be validated before a request is sent. Requests are never materialised.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from evalrun.config import Experiment, ModelEntry
from evalrun.datasets import (
    DatasetInfo,
    check_dataset,
    estimate_tokens,
    iter_rows,
    placeholders,
    render,
    resolve_path,
    row_digest,
)
from evalrun.errors import ConfigError
from evalrun.params import RequestParams, clean_params
from evalrun.records import Cell, Message, RequestSpec

MAX_CELLS = 100_000


def _digest(obj: Any, size: int = 8) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=size).hexdigest()


def prompt_templates(exp: Experiment) -> dict[str, list[Message]]:
    """Each prompt variant's messages as wire-shaped dicts (placeholders still in)."""
    return {
        name: [m.model_dump(exclude_none=True) for m in messages]  # type: ignore[misc]
        for name, messages in exp.config.prompts.items()
    }


def _matches(entry: dict[str, Any], model: str, prompt: str, params: dict[str, Any]) -> bool:
    for key, value in entry.items():
        if key == "model":
            if value != model:
                return False
        elif key == "prompt":
            if value != prompt:
                return False
        elif params.get(key) != value:
            return False
    return True


def expand_cells(exp: Experiment) -> list[Cell]:
    """Every cell of the grid, validated, in a stable order."""
    cfg = exp.config
    templates = prompt_templates(exp)
    base = cfg.params.model_dump(exclude_none=True)
    axes = exp.grid.axes
    names = list(axes)
    combos: list[tuple[ModelEntry, str, dict[str, Any]]] = []  # (model entry, prompt, grid values)
    for model in cfg.models:
        for values in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, values))
            for prompt in templates:
                if any(_matches(e, model.name, prompt, point) for e in exp.grid.exclude):
                    continue
                combos.append((model, prompt, point))
                if len(combos) > MAX_CELLS:
                    raise ConfigError(f"{exp.where('grid')}: the grid has more than {MAX_CELLS:,} cells")
    for entry in exp.grid.include:
        point = {k: v for k, v in entry.items() if k not in ("model", "prompt")}
        for model in cfg.models:
            if entry.get("model", model.name) != model.name:
                continue
            for prompt in [entry["prompt"]] if "prompt" in entry else list(templates):
                combos.append((model, prompt, point))
    cells: dict[str, Cell] = {}
    for model, prompt, point in combos:
        mparams = model.params.model_dump(exclude_none=True)
        merged = {**base, **mparams, **point}  # later wins: params < model params < grid
        try:
            params = clean_params(RequestParams.model_validate(merged))
        except ValidationError as exc:
            err = exc.errors()[0]
            desc = ", ".join(f"{k}={v!r}" for k, v in {"model": model.name, "prompt": prompt, **point}.items())
            block = "grid" if point else "params"
            raise ConfigError(
                f"{exp.where(block)}: {block}: {err['msg'].removeprefix('Value error, ')} "
                f"(in the cell {desc}, after merging params < model params < grid)"
            ) from None
        provider = exp.provider_of(model)
        cell_id = _digest([provider, model.name, params, prompt, templates[prompt]], 6)
        if cell_id not in cells:  # an include equal to an existing cell adds nothing
            cells[cell_id] = Cell(cell_id, provider, model.name, prompt, params)
    if not cells:
        raise ConfigError(f"{exp.where('grid', 'exclude')}: the grid is empty: every combination is excluded")
    return list(cells.values())


@dataclass(frozen=True)
class Plan:
    """What a run will send: cells, rows and repeats; the request stream is derived lazily."""

    exp: Experiment
    cells: list[Cell]
    dataset: DatasetInfo
    templates: dict[str, list[Message]]

    @property
    def repeats(self) -> int:
        return self.exp.config.repeats

    @property
    def total_requests(self) -> int:
        return len(self.cells) * self.dataset.rows * self.repeats

    def specs(self) -> Iterator[RequestSpec]:
        """Every request of the grid: repeat-major, then row, then cell (so models interleave)."""
        by_prompt: dict[str, list[Cell]] = {}
        for cell in self.cells:
            by_prompt.setdefault(cell.prompt_id, []).append(cell)
        for repeat in range(self.repeats):
            for row_id, row in iter_rows(self.dataset):
                digest = row_digest(row)
                for prompt_id, cells in by_prompt.items():
                    messages = render(self.templates[prompt_id], row)
                    est = estimate_tokens(messages)
                    for cell in cells:
                        rid = hashlib.blake2b(
                            f"{cell.cell_id}|{row_id}|{digest}|{repeat}".encode(), digest_size=8
                        ).hexdigest()
                        yield RequestSpec(rid, cell, row_id, repeat, messages, row, est)


def build_plan(exp: Experiment, limit: int | None = None) -> Plan:
    """Validate the grid and the dataset (one streaming pass); no request is sent."""
    cells = expand_cells(exp)
    templates = prompt_templates(exp)
    needed = {name: placeholders(msgs) for name, msgs in templates.items()}
    ds = exp.config.dataset
    path = resolve_path(ds.path, exp.path)
    lim = limit if limit is not None else ds.limit
    try:
        info = check_dataset(path, ds.format, ds.id_column, lim, needed)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (dataset: in {exp.where('dataset')})") from None
    return Plan(exp, cells, info, templates)
