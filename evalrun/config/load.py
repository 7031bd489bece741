"""The experiment file: YAML loading with line numbers, `--set`, providers and the `grid:` block
resolved against the schema in `models.py`.

Every error is a `ConfigError` whose message names the file, the line (when known), the key
path and what is allowed, so that `evalrun` can print it and exit 2 before any request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from evalrun.config.diagnostics import (
    describe_kind,
    did_you_mean,
    dotted,
    format_validation,
    format_yaml_error,
)
from evalrun.config.models import PRESETS, ExperimentConfig, ModelEntry, ProviderConfig
from evalrun.config.params import PARAM_NAMES, RequestParams
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
        return model.provider or self.default_provider

    @property
    def default_provider(self) -> str:
        """`provider:`, else the only provider defined, else the simulator when none is."""
        if self.config.provider:
            return self.config.provider
        if len(self.config.providers) == 1:
            return next(iter(self.config.providers))
        if not self.config.providers:
            return "simulator"
        raise ConfigError(
            f"{self.where('providers')}: several providers are defined ({', '.join(self.config.providers)}) "
            "and a model names none; set provider: at the top level or on each model"
        )

    def where(self, *path: Any) -> str:
        """`file:line` for a key path, for error messages."""
        line = self.lines.get(tuple(path))
        return f"{self.path}:{line}" if line else str(self.path)


# --------------------------------------------------------------------------- loading


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override, validate. Raises ConfigError with file, line and key path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(format_yaml_error(exc, path)) from None
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
        overridden[_apply_override(raw, item, path)] = item
    try:
        # params and model params are checked field by field here; combinations such as
        # top_logprobs-needs-logprobs are checked on each merged cell in grid.expand_cells
        cfg = ExperimentConfig.model_validate(raw, context={"partial": True})
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, ExperimentConfig, path, raw, lines, overridden)) from None
    exp = Experiment(config=cfg, path=path, grid=GridAxes({}, [], []), providers={}, raw=raw, lines=lines)
    exp.providers = _resolve_providers(exp)
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


def _apply_override(raw: dict[str, Any], item: str, path: Path) -> tuple[str, ...]:
    """Apply one `--set key.path=value`; returns the key path it set."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{path}: --set {item!r}: expected key.path=value, e.g. --set params.temperature=0.5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} in {path} is not a mapping")
        node = nxt
    node[parts[-1]] = parsed
    return tuple(parts)


def _resolve_providers(exp: Experiment) -> dict[str, ProviderConfig]:
    cfg = exp.config
    providers = dict(cfg.providers)
    used = {exp.provider_of(m) for m in cfg.models}
    for name in sorted(used):
        if name in providers:
            continue
        if name in PRESETS:
            extra = {"limiter": cfg.limiter} if cfg.limiter else {}  # the experiment's shared limiter
            providers[name] = ProviderConfig.model_validate({**PRESETS[name], **extra})
            continue
        known = sorted(set(providers) | set(PRESETS))
        hint = did_you_mean(name, known)
        line_path: tuple[Any, ...] = ("provider",)
        if cfg.provider != name:
            i = next((i for i, m in enumerate(cfg.models) if m.provider == name), None)
            line_path = ("models", i, "provider") if i is not None else ("models",)
        raise ConfigError(
            f"{exp.where(*line_path)}: provider {name!r} is not defined{hint}; "
            f"define it under providers: or use one of {', '.join(known)}"
        )
    return providers


@functools.cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    """Validates one parameter on its own (a grid value), with the field's range."""
    info = RequestParams.model_fields[name]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[info.annotation, *info.metadata])  # type: ignore[valid-type]


def _validate_value(exp: Experiment, key: str, value: Any, path: tuple[Any, ...]) -> Any:
    try:
        return _field_adapter(key).validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        key_path = dotted(path)
        raise ConfigError(f"{exp.where(*path)}: {key_path}: {err['msg']} (got {value!r})") from None


def _validate_grid(exp: Experiment) -> GridAxes:
    raw = exp.config.grid
    axes: dict[str, list[Any]] = {}
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    model_names = [m.name for m in exp.config.models]
    prompt_ids = list(exp.config.prompts)
    for key, values in raw.items():
        if key in ("include", "exclude"):
            continue
        if key in ("model", "models", "prompt", "prompts"):
            raise ConfigError(
                f"{exp.where('grid', key)}: grid.{key}: models and prompts are grid axes already; "
                "list them under models: and prompts:, not under grid:"
            )
        if key not in PARAM_NAMES:
            raise ConfigError(
                f"{exp.where('grid', key)}: grid.{key}: unknown request parameter"
                f"{did_you_mean(key, PARAM_NAMES)}; allowed: {', '.join(PARAM_NAMES)}"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{exp.where('grid', key)}: grid.{key}: must be a non-empty list of values, "
                f"e.g. {key}: [a, b] (got {values!r})"
            )
        axes[key] = [_validate_value(exp, key, v, ("grid", key, i)) for i, v in enumerate(values)]
        if len(set(map(repr, axes[key]))) != len(axes[key]):
            raise ConfigError(f"{exp.where('grid', key)}: grid.{key}: a value is listed twice")
    for kind, out in (("include", include), ("exclude", exclude)):
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{exp.where('grid', kind)}: grid.{kind}: must be a list of mappings")
        for i, entry in enumerate(entries):
            where = exp.where("grid", kind, i)
            if not isinstance(entry, dict) or not entry:
                raise ConfigError(f"{where}: grid.{kind}[{i}]: must be a mapping like {{model: m, temperature: 0}}")
            allowed = ["model", "prompt", *(axes if kind == "exclude" else PARAM_NAMES)]
            clean: dict[str, Any] = {}
            for key, value in entry.items():
                if key not in allowed:
                    raise ConfigError(
                        f"{where}: grid.{kind}[{i}].{key}: not a grid axis"
                        f"{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}"
                    )
                if key == "model" and value not in model_names:
                    raise ConfigError(
                        f"{where}: grid.{kind}[{i}].model: {value!r} is not in models:"
                        f"{did_you_mean(str(value), model_names)}"
                    )
                if key == "prompt" and value not in prompt_ids:
                    raise ConfigError(
                        f"{where}: grid.{kind}[{i}].prompt: {value!r} is not in prompts:"
                        f"{did_you_mean(str(value), prompt_ids)}"
                    )
                clean[key] = (
                    value if key in ("model", "prompt") else _validate_value(exp, key, value, ("grid", kind, i, key))
                )
            out.append(clean)
    return GridAxes(axes, include, exclude)
