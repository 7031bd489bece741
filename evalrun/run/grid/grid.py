"""Grid expansion: models × grid axes (minus exclude, plus include) × prompts → cells; then
cells × dataset rows × repeats → a lazy stream of `RequestSpec`s with stable ids.

The cell list is small (it does not grow with the dataset) and is built eagerly so that every
cell's parameters can be validated before a request is sent. Requests are never materialised.
A row may add its own parameters (`dataset.params_from_columns`) and messages
(`{from_column: …}`); both are checked in the one dataset pass, against every cell.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from evalrun.config.load import Experiment
from evalrun.config.models import ModelEntry
from evalrun.config.params import REQUIRES, RequestParams, clean_params
from evalrun.config.templates import placeholders
from evalrun.errors import ConfigError
from evalrun.run.grid.datasets import (
    DatasetInfo,
    check_dataset,
    conversation,
    estimate_tokens,
    iter_rows,
    render,
    resolve_path,
    row_digest,
    row_params,
)
from evalrun.run.records.records import Cell, PromptEntry, RequestSpec
from evalrun.run.store.storage import fetch_dataset, is_url

MAX_CELLS = 100_000
# The parameters RequestParams' combination rules pair up (top_logprobs needs logprobs,
# stream_options needs stream, tool_choice needs tools). A row's value can complete or break a
# pair, so these are checked per row, against each distinct set of them among the cells.
PAIRED = frozenset(REQUIRES) | frozenset(REQUIRES.values())  # parameters in a combination rule
# While a cell is checked alone, a parameter the rows supply stands in as set (its real value is
# checked per row): a cell with tool_choice: required and tools from a column is fine.
_ROW_STANDINS: dict[str, object] = {
    "tools": [{"type": "function", "function": {"name": "from_dataset"}}],
    "logprobs": True,
    "stream": True,
}


def _digest(obj: Any, size: int = 8) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=size).hexdigest()


def prompt_templates(exp: Experiment) -> dict[str, list[PromptEntry]]:
    """Each prompt variant's entries as wire-shaped dicts (placeholders and from_column still in)."""
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
    templates = prompt_templates(exp)
    combos = _combinations(exp, list(templates))
    base = exp.config.params.model_dump(exclude_none=True)
    per_row = exp.config.dataset.params_from_columns
    standins = {k: v for k, v in _ROW_STANDINS.items() if k in per_row}
    cells: dict[str, Cell] = {}
    for model, prompt, point in combos:
        params = _cell_params(exp, base, standins, (model, prompt, point))
        provider = exp.provider_of(model)
        # which columns set parameters is part of what the cell sends (absent: ids as before)
        identity = [provider, model.name, params, prompt, templates[prompt], *([per_row] if per_row else [])]
        cell_id = _digest(identity, 6)
        if cell_id not in cells:  # an include equal to an existing cell adds nothing
            cells[cell_id] = Cell(cell_id, provider, model.name, prompt, params)
    if not cells:
        raise ConfigError(f"{exp.where('grid', 'exclude')}: the grid is empty: every combination is excluded")
    return list(cells.values())


def _combinations(exp: Experiment, prompts: list[str]) -> list[tuple[ModelEntry, str, dict[str, Any]]]:
    """(model entry, prompt, grid values) for each point of models × axes × prompts not
    excluded, then each include's."""
    axes = exp.grid.axes
    names = list(axes)
    combos: list[tuple[ModelEntry, str, dict[str, Any]]] = []
    for model in exp.config.models:
        for values in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, values))
            for prompt in prompts:
                if any(_matches(e, model.name, prompt, point) for e in exp.grid.exclude):
                    continue
                combos.append((model, prompt, point))
                if len(combos) > MAX_CELLS:
                    raise ConfigError(f"{exp.where('grid')}: the grid has more than {MAX_CELLS:,} cells")
    for entry in exp.grid.include:
        point = {k: v for k, v in entry.items() if k not in ("model", "prompt")}
        for model in exp.config.models:
            if entry.get("model", model.name) != model.name:
                continue
            for prompt in [entry["prompt"]] if "prompt" in entry else prompts:
                combos.append((model, prompt, point))
    return combos


def _cell_params(
    exp: Experiment,
    base: dict[str, Any],
    standins: dict[str, object],
    combo: tuple[ModelEntry, str, dict[str, Any]],
) -> dict[str, Any]:
    """A cell's request parameters (params < model params < grid, later wins), validated; the
    parameters rows supply (`standins`) stand in as set while the cell is checked alone."""
    model, prompt, point = combo
    merged = {**base, **model.params.model_dump(exclude_none=True), **point}
    try:
        if standins:
            RequestParams.model_validate({**merged, **standins})
        return clean_params(RequestParams.model_validate(merged, context={"partial": bool(standins)}))
    except ValidationError as exc:
        err = exc.errors()[0]
        desc = ", ".join(f"{k}={v!r}" for k, v in {"model": model.name, "prompt": prompt, **point}.items())
        block = "grid" if point else "params"
        raise ConfigError(
            f"{exp.where(block)}: {block}: {err['msg'].removeprefix('Value error, ')} "
            f"(in the cell {desc}, after merging params < model params < grid)"
        ) from None


@dataclass(frozen=True)
class Plan:
    """What a run will send: cells, rows and repeats; the request stream is derived lazily."""

    exp: Experiment
    cells: list[Cell]
    dataset: DatasetInfo
    templates: dict[str, list[PromptEntry]]

    @property
    def repeats(self) -> int:
        return self.exp.config.repeats

    @property
    def total_requests(self) -> int:
        return len(self.cells) * self.dataset.rows * self.repeats

    def specs(self, cells: Sequence[Cell] | None = None, rows_first: bool = False) -> Iterator[RequestSpec]:
        """Every request of the grid (or of `cells` only — the pool runs one stream per provider ×
        model): repeat-major, then row, then cell (so models interleave). `rows_first`: every
        repeat of a row before the next row, so rows complete one by one (--stop-when-decided
        judges whole rows as they come)."""
        by_prompt: dict[str, list[Cell]] = {}
        for cell in self.cells if cells is None else cells:
            by_prompt.setdefault(cell.prompt_id, []).append(cell)
        if rows_first:
            for row_id, row in iter_rows(self.dataset):
                for repeat in range(self.repeats):
                    yield from self._row_specs(by_prompt, row_id, row, repeat)
            return
        for repeat in range(self.repeats):
            for row_id, row in iter_rows(self.dataset):
                yield from self._row_specs(by_prompt, row_id, row, repeat)

    def _row_specs(
        self, by_prompt: dict[str, list[Cell]], row_id: str, row: dict[str, Any], repeat: int
    ) -> Iterator[RequestSpec]:
        """One row's requests of one repeat, in every cell (request ids do not depend on order)."""
        mapping = self.exp.config.dataset.params_from_columns
        digest = row_digest(row)
        rparams = row_params(row, mapping) if mapping else {}
        key = f"|{_digest(rparams)}" if rparams else ""  # absent: ids as before
        for prompt_id, cells in by_prompt.items():
            messages = render(self.templates[prompt_id], row)
            est = estimate_tokens(messages)
            for cell in cells:
                rid = hashlib.blake2b(
                    f"{cell.cell_id}|{row_id}|{digest}|{repeat}{key}".encode(), digest_size=8
                ).hexdigest()
                yield RequestSpec(rid, cell, row_id, repeat, messages, row, est, rparams)


def _check_min_passes(exp: Experiment, cells: list[Cell]) -> None:
    """gate.min_passes counts a row's answers (repeats × choices): a k no cell can reach would
    make every row fail the gate, so it is refused before anything is sent."""
    k, repeats = exp.config.gate.min_passes, exp.config.repeats
    if k is None:
        return
    for cell in cells:
        answers = repeats * (cell.params.get("n") or 1)
        if k > answers:
            raise ConfigError(
                f"{exp.where('gate', 'min_passes')}: gate.min_passes: {k} is more than the answers per row of "
                f"the cell {cell.model} · {cell.prompt_id} (repeats × choices = {repeats} × "
                f"{cell.params.get('n') or 1}); allowed: 1 to {answers}"
            )


def build_plan(exp: Experiment, limit: int | None = None) -> Plan:
    """Validate the grid and the dataset (one streaming pass); no request is sent."""
    cells = expand_cells(exp)
    _check_min_passes(exp, cells)
    templates = prompt_templates(exp)
    needed = {name: placeholders(msgs) for name, msgs in templates.items()}
    ds = exp.config.dataset
    path = fetch_dataset(ds.path) if is_url(ds.path) else resolve_path(ds.path, exp.path)
    lim = limit if limit is not None else ds.limit
    try:
        info = check_dataset(path, ds.format, ds.id_column, lim, needed, _row_checker(exp, cells, templates))
    except ConfigError as exc:
        # a dataset at a URL is read from a local copy under a hashed name: say the URL
        said = str(exc).replace(str(path), ds.path) if is_url(ds.path) else str(exc)
        raise ConfigError(f"{said} (dataset: in {exp.where('dataset')})") from None
    never = [c for c in ds.params_from_columns.values() if c not in info.columns]
    if never:  # a null cell sets nothing, so a misspelt column would silently set nothing at all
        raise ConfigError(
            f"{exp.where('dataset', 'params_from_columns')}: dataset.params_from_columns: no row has a column "
            f"{never[0]!r}; columns: {', '.join(info.columns)}"
        )
    return Plan(exp, cells, info, templates)


def _row_checker(
    exp: Experiment, cells: list[Cell], templates: dict[str, list[PromptEntry]]
) -> Callable[[dict[str, Any]], None] | None:
    """What check_dataset checks in each row beyond placeholders: the messages a from_column
    entry brings, and the row's parameters alone and merged with each cell's. Raises ValueError."""
    mapping = exp.config.dataset.params_from_columns
    from_columns = {
        name: [m["from_column"] for m in entries if "from_column" in m] for name, entries in templates.items()
    }
    from_columns = {name: cols for name, cols in from_columns.items() if cols}
    if not mapping and not from_columns:
        return None
    pairs: dict[str, tuple[dict[str, Any], Cell]] = {}  # a handful, however many cells
    for cell in cells:
        paired = {k: v for k, v in cell.params.items() if k in PAIRED}
        pairs.setdefault(_digest(paired), (paired, cell))

    def check(row: dict[str, Any]) -> None:
        for prompt, cols in from_columns.items():
            for col in cols:
                used = f"used as {{from_column: {col}}} by prompt {prompt!r}"
                if col not in row:
                    raise ValueError(f"row has no column {col!r}, {used}; columns here: {', '.join(row) or '(none)'}")
                try:
                    messages = conversation(row[col])
                except ValueError as exc:
                    raise ValueError(f"column {col!r} ({used}): {exc}") from None
                if not messages and all("from_column" in m for m in templates[prompt]):
                    raise ValueError(f"column {col!r} ({used}) holds no messages, and the prompt has no others")
        if not mapping:
            return
        rparams = row_params(row, mapping)
        for paired, cell in pairs.values():
            try:
                RequestParams.model_validate({**paired, **rparams})
            except ValidationError as exc:
                why = exc.errors()[0]["msg"].removeprefix("Value error, ")
                sets = ", ".join(f"{k} from column {mapping[k]!r}" for k in rparams) or "no parameter (all null)"
                raise ValueError(
                    f"{why}: this row sets {sets}, merged over the cell model={cell.model}, prompt={cell.prompt_id} "
                    f"with {paired or 'none of ' + ', '.join(sorted(PAIRED))}"
                ) from None

    return check
