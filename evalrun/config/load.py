"""The experiment file: YAML loading with line numbers, `--set`, providers and the `grid:` block
resolved against the schema in `models.py`.

Every error is a `ConfigError` whose message names the file, the line (when known), the key
path and what is allowed, so that `evalrun` can print it and exit 2 before any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evalrun.config.catalog import retired_note, unknown_model
from evalrun.config.credentials import looks_like_key
from evalrun.config.diagnostics import (
    describe_kind,
    did_you_mean,
    dotted,
    format_validation,
    format_yaml_error,
)
from evalrun.config.models import PRESETS, ExperimentConfig, ModelEntry, ProviderConfig
from evalrun.config.params import PARAM_NAMES
from evalrun.config.scorers import LabelModel, PairwiseModel, ScoreModel
from evalrun.errors import ConfigError


@dataclass(frozen=True)
class GridAxes:
    """The validated `grid:` block."""

    axes: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]


@dataclass
class Experiment:
    """A validated experiment, with where it came from."""

    config: ExperimentConfig
    path: Path
    grid: GridAxes
    providers: dict[str, ProviderConfig]
    raw: dict[str, Any]  # the resolved YAML (after --set), for the manifest
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.experiment

    def provider_of(self, model: ModelEntry) -> str:
        """The provider a model's requests go to (load_experiment checked there is one)."""
        return self.provider_for(model.provider, "models")

    def judge_provider(self, index: int) -> str:
        """The provider of the judge `scorers[index]`."""
        return self.provider_for(getattr(self.config.scorers[index], "provider", None), "scorers", index)

    def provider_for(self, named: str | None, *path: Any) -> str:
        """A model's or judge's provider: its own, else `provider:`, else the only provider
        defined, else the simulator when none is. Only what names none needs that default: two
        providers and every model naming its own is a whole experiment."""
        cfg = self.config
        if named:
            return named
        if cfg.provider:
            return cfg.provider
        if len(cfg.providers) == 1:
            return next(iter(cfg.providers))
        if not cfg.providers:
            return "simulator"
        names = ", ".join(cfg.providers)
        raise ConfigError(
            f"{self.where(*path)}: {dotted(path)}: several providers are defined ({names}) and this names "
            f"none; give it provider: (one of {names}), or set provider: at the top level"
        )

    def where(self, *path: Any) -> str:
        """`file:line` for a key path, for error messages."""
        line = self.lines.get(tuple(path))
        return f"{self.path}:{line}" if line else str(self.path)


# --------------------------------------------------------------------------- loading

# An experiment file is a few hundred values, nested a few levels. Aliases can make a short
# file stand for billions of values ("billion laughs"): every walk over it (line index,
# validation, the manifest) would then hang, so the expanded size is bounded before any.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000


def check_yaml_size(root: yaml.Node | None, path: Path) -> None:
    """Refuse a YAML document deeper than MAX_YAML_DEPTH, larger than MAX_YAML_VALUES once its
    aliases are expanded, or holding an alias to itself. Linear in the distinct nodes."""
    seen: dict[int, tuple[int, int]] = {}  # id(node) → (expanded size, height): aliases share nodes
    open_nodes: set[int] = set()

    def too_deep(line: int) -> ConfigError:
        return ConfigError(
            f"{path}:{line}: the YAML nests deeper than {MAX_YAML_DEPTH} levels; an experiment file needs a handful"
        )

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        line = node.start_mark.line + 1
        if key in seen:
            total, height = seen[key]
            if depth + height > MAX_YAML_DEPTH:  # an alias can put a deep value deeper still
                raise too_deep(line)
            return total
        if depth > MAX_YAML_DEPTH:
            raise too_deep(line)
        if key in open_nodes:
            raise ConfigError(f"{path}:{line}: an alias refers to the value that contains it; YAML cannot expand that")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1 + sum(size(c, depth + 1) for c in children)
        height = 1 + max((seen[id(c)][1] for c in children), default=0)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}:{line}: this value expands to more than {MAX_YAML_VALUES:,} values through nested "
                "aliases (*name); write the values out, or use fewer levels of aliases"
            )
        seen[key] = (total, height)
        return total

    if root is not None:
        size(root, 0)


def load_experiment(path: str | Path, overrides: list[str] | None = None, *, check_models: bool = True) -> Experiment:
    """Read, override, validate. Raises ConfigError with file, line and key path. Without
    `check_models`, model names are not checked against the providers' catalogs (`evalrun
    models` reads the providers of a config whose names it is asked to help with)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text)
        check_yaml_size(node, path)  # before anything expands the aliases
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(format_yaml_error(exc, path)) from None
    except RecursionError:  # PyYAML's composer recurses per level: thousands of levels end here
        raise ConfigError(
            f"{path}: the YAML nests deeper than {MAX_YAML_DEPTH} levels; an experiment file needs a handful"
        ) from None
    if raw is None:
        raise ConfigError(
            f"{path}: the file is empty; an experiment is a YAML mapping with the keys "
            "experiment:, models:, prompts: and dataset:"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1 if node else 1}: the file must be a YAML mapping with the keys "
            f"experiment:, models:, prompts: and dataset: (got {describe_kind(raw)})"
        )
    lines: dict[tuple[Any, ...], int] = {}
    _index_lines(node, (), lines, path)
    overridden: dict[tuple[str, ...], str] = {}
    for item in overrides or []:
        overridden[_apply_override(raw, item, path)] = _shown(item)
    try:
        # params and model params are checked field by field here; combinations such as
        # top_logprobs-needs-logprobs are checked on each merged cell in grid.expand_cells
        cfg = ExperimentConfig.model_validate(raw, context={"partial": True})
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, ExperimentConfig, path, raw, lines, overridden)) from None
    exp = Experiment(config=cfg, path=path, grid=GridAxes({}, [], []), providers={}, raw=raw, lines=lines)
    exp.providers = _resolve_providers(exp, check_models)
    exp.grid = _validate_grid(exp)
    return exp


def _index_lines(
    node: yaml.Node | None, path: tuple[Any, ...], out: dict[tuple[Any, ...], int], file: Path | None = None
) -> None:
    """Key path → line; a key repeated in one mapping is an error (YAML would keep the last silently)."""
    if node is None:
        return
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            sub = path + (key.value,)
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in first:
                    raise ConfigError(
                        f"{file}:{line}: {dotted(sub)}: the key is repeated (first at line {first[key.value]}); "
                        "keep one of them"
                    )
                first[key.value] = line
            out[sub] = line
            _index_lines(value, sub, out, file)
            out[sub] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _index_lines(value, path + (i,), out, file)


def _shown(item: str) -> str:
    """A --set item as an error message may repeat it: a value that looks like a key is hidden."""
    key, _, value = item.partition("=")
    return f"{key}=<hidden: it looks like a key>" if looks_like_key(value.strip()) else item


def _apply_override(raw: dict[str, Any], item: str, path: Path) -> tuple[str, ...]:
    """Apply one `--set key.path=value`; returns the key path it set."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{path}: --set {item!r}: expected key.path=value, e.g. --set params.temperature=0.5")
    try:
        tree = yaml.compose(value) if value.strip() else None
        check_yaml_size(tree, Path(f"--set {key}"))
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    except RecursionError:
        raise ConfigError(f"--set {key}: the value nests deeper than {MAX_YAML_DEPTH} levels") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if i == 0 and part == "dataset" and isinstance(nxt, str):  # `dataset: PATH` is short for {path: PATH}
            nxt = node[part] = {"path": nxt}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"--set {key}: {where} in {path} is {describe_kind(nxt)} ({nxt!r}), not a mapping; "
                f"set the whole value instead: --set {where}=…"
            )
        node = nxt
    node[parts[-1]] = parsed
    return tuple(parts)


def _users(exp: Experiment) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, model name, provider name) of every model and judge of the experiment; one
    that names no provider and has no default to fall back on is an error naming its key."""
    cfg = exp.config
    out = [(("models", i), m.name, exp.provider_for(m.provider, "models", i)) for i, m in enumerate(cfg.models)]
    for j, s in enumerate(cfg.scorers):
        if isinstance(s, LabelModel | ScoreModel | PairwiseModel):  # a judge
            out.append((("scorers", j), s.model, exp.judge_provider(j)))
    return out


def _resolve_providers(exp: Experiment, check_models: bool) -> dict[str, ProviderConfig]:
    cfg = exp.config
    providers = dict(cfg.providers)
    users = _users(exp)
    for path, _, name in users:
        if name in providers:
            continue
        if name in PRESETS:
            extra = {"limiter": cfg.limiter} if cfg.limiter else {}  # the experiment's shared limiter
            providers[name] = ProviderConfig.model_validate({**PRESETS[name], **extra})
            continue
        known = sorted(set(providers) | set(PRESETS))
        line_path = path + ("provider",) if exp.lines.get(path + ("provider",)) else ("provider",)
        raise ConfigError(
            f"{exp.where(*line_path)}: {dotted(line_path)}: provider {name!r} is not defined"
            f"{did_you_mean(name, known)}; define it under providers: or use one of {', '.join(known)}"
        )
    for path, model, name in users if check_models else []:
        problem = unknown_model(model, name, providers[name])
        if problem:
            key = path + ("model",) if path[0] == "scorers" else path + ("name",)
            key = key if key in exp.lines else path  # a model written as a bare name
            raise ConfigError(f"{exp.where(*key)}: {dotted(key)}: {problem}")
    return providers


def model_warnings(exp: Experiment) -> list[str]:
    """What validate, plan and run say about the experiment's models before sending: models
    retired by their maker (a warning, not an error: see README, Models)."""
    notes = (retired_note(model, name, exp.providers[name]) for _, model, name in _users(exp))
    return list(dict.fromkeys(n for n in notes if n))


def _validate_grid(exp: Experiment) -> GridAxes:
    """The grid's references, checked against the rest of the experiment (its shapes and
    ranges were checked by GridConfig): a point's model and prompt exist; exclude keys are axes."""
    grid = exp.config.grid
    axes = grid.axes()
    model_names = [m.name for m in exp.config.models]
    prompt_ids = list(exp.config.prompts)
    points: dict[str, list[dict[str, Any]]] = {"include": [], "exclude": []}
    for kind, out in points.items():
        for i, entry in enumerate(getattr(grid, kind)):
            where = exp.where("grid", kind, i)
            point = grid.point(entry)
            if not point:
                raise ConfigError(f"{where}: grid.{kind}[{i}]: must be a mapping like {{model: m, temperature: 0}}")
            allowed = ["model", "prompt", *(axes if kind == "exclude" else PARAM_NAMES)]
            for key, value in point.items():
                if key not in allowed:
                    raise ConfigError(
                        f"{where}: grid.{kind}[{i}].{key}: not a grid axis"
                        f"{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}"
                    )
                for name, known, section in (("model", model_names, "models"), ("prompt", prompt_ids, "prompts")):
                    if key == name and value not in known:
                        raise ConfigError(
                            f"{where}: grid.{kind}[{i}].{name}: {value!r} is not in {section}:"
                            f"{did_you_mean(str(value), known)}"
                        )
            out.append(point)
    return GridAxes(axes, points["include"], points["exclude"])
