"""What a user declares under `scorers:` and `gate:`: the schemas only. Compiling and applying
them is the analysis stage's job (`evalrun.analysis.scoring`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Normalize = Literal["case", "whitespace", "punctuation"]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Scorer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, pattern=_NAME, description="column suffix; defaults to the type")


class ExactMatch(_Scorer):
    """The answer (or the part `extract` captures) equals `expected` after normalisation."""

    type: Literal["exact_match"]
    expected: str = "{answer}"
    normalize: list[Normalize] = Field(default_factory=lambda: list[Normalize](["whitespace"]))
    extract: str | None = Field(None, description="regex; its first group (or whole match) is compared")


class Contains(_Scorer):
    type: Literal["contains", "not_contains"]
    value: str
    normalize: list[Normalize] = Field(default_factory=list)


class RegexMatch(_Scorer):
    type: Literal["regex"]
    pattern: str


class NumericMatch(_Scorer):
    """A number pulled from free text (the last one, or `extract`'s group) is within tolerance."""

    type: Literal["numeric"]
    expected: str = "{answer}"
    tolerance: float = Field(0.0, ge=0, description="absolute")
    rel_tolerance: float = Field(0.0, ge=0, description="relative to |expected|")
    extract: str | None = None


class JsonValid(_Scorer):
    type: Literal["json_valid"]


class JsonSchemaMatch(_Scorer):
    """The content parses as JSON and validates against a schema (inline or per row)."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    schema_column: str | None = None

    @model_validator(mode="after")
    def _one_schema(self) -> JsonSchemaMatch:
        if (self.schema_ is None) == (self.schema_column is None):
            raise ValueError("give exactly one of schema (inline) or schema_column (per row)")
        return self


class ChoiceLogprobs(_Scorer):
    """Multiple choice read from the first token's top_logprobs: score = probability on the
    expected option (normalised over the options), pass = it is the most likely option."""

    type: Literal["choice_logprobs"]
    choices: list[str] = Field(default_factory=lambda: ["A", "B", "C", "D"], min_length=2)
    expected: str = "{answer}"


class Custom(_Scorer):
    """`module:function(row, response) -> bool | float | (score, passed) | {score, pass}`."""

    type: Literal["custom"]
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    path: str | None = Field(None, description="folder to import from, relative to the config")
    threshold: float = Field(0.5, description="a float result passes at or above this")


ScorerConfig = Annotated[
    ExactMatch | Contains | RegexMatch | NumericMatch | JsonValid | JsonSchemaMatch | ChoiceLogprobs | Custom,
    Field(discriminator="type"),
]


class GateConfig(BaseModel):
    """Defaults for `evalrun compare` (the command line overrides them)."""

    model_config = ConfigDict(extra="forbid")
    scorer: str | None = Field(None, description="which scorer's pass rate gates; default the first")
    fail_on_drop: float = Field(0.02, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=1)
