"""The `grid:` block's schema: one list-valued axis per request parameter (each value with that
parameter's own type and range), and `include:`/`exclude:` points.

The model is derived from `RequestParams`, so a parameter added there is a grid axis at once,
with the same range. References (a point's model and prompt, exclude keys that must be axes)
are checked against the rest of the experiment in `load.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, field_validator, model_validator

from evalrun.config.params import PARAM_NAMES, RequestParams

NOT_AXES = ("model", "models", "prompt", "prompts")  # axes of their own, declared elsewhere


def _value_type(name: str) -> Any:
    """One parameter's type with its range (ge/le and friends) attached."""
    info = RequestParams.model_fields[name]
    return Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _point_fields() -> dict[str, Any]:  # pydantic's (type, FieldInfo) pairs
    return {
        "model": (str | None, Field(None, description="a name from models:")),
        "prompt": (str | None, Field(None, description="a name from prompts:")),
        **{p: (_value_type(p), None) for p in PARAM_NAMES},
    }


# One include:/exclude: entry: any of the axes, each with its parameter's type and range.
GridPoint: type[_Strict] = create_model("GridPoint", __base__=_Strict, **_point_fields())


class _GridBase(_Strict):
    include: list[GridPoint] = Field(default_factory=list)
    exclude: list[GridPoint] = Field(default_factory=list)
    _order: list[str] = PrivateAttr(default_factory=list)  # axes in the file's order: it orders the cells

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            model._order = [k for k in data if k in PARAM_NAMES]
        return model

    @field_validator(*NOT_AXES, mode="before", check_fields=False)
    @classmethod
    def _not_here(cls, v: object) -> object:
        raise ValueError(
            "models and prompts are grid axes already; list them under models: and prompts:, not under grid:"
        )

    @field_validator(*PARAM_NAMES, mode="before", check_fields=False)
    @classmethod
    def _non_empty_list(cls, v: object, info: Any) -> object:
        if not isinstance(v, list) or not v:
            raise ValueError(f"must be a non-empty list of values, e.g. {info.field_name}: [a, b] (got {v!r})")
        if len(set(map(repr, v))) != len(v):
            raise ValueError("a value is listed twice")
        return v

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _entries(cls, v: object) -> object:
        if isinstance(v, list) and any(not isinstance(e, dict) or not e for e in v):
            raise ValueError("must be a list of mappings like {model: m, temperature: 0}")
        return v

    def axes(self) -> dict[str, list[Any]]:
        """The parameter axes that were given, in the order of the file."""
        return {k: getattr(self, k) for k in self._order}

    @staticmethod
    def point(entry: BaseModel) -> dict[str, Any]:
        """An include/exclude entry as the keys it sets."""
        return {k: getattr(entry, k) for k in entry.model_fields_set}


def _axis(name: str) -> Any:
    """`list[<the parameter's type>] | None`, built at run time (mypy cannot see through it)."""
    return list.__class_getitem__(_value_type(name)) | None


_AXES: dict[str, Any] = {p: (_axis(p), Field(None, description=f"values of {p}")) for p in PARAM_NAMES}
_REFUSED: dict[str, Any] = {n: (Any, Field(None, exclude=True)) for n in NOT_AXES}
GridConfig: type[_GridBase] = create_model("GridConfig", __base__=_GridBase, **_AXES, **_REFUSED)
