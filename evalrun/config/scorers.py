"""What a user declares under `scorers:` and `gate:`: the schemas only. Compiling and applying
them is the analysis stage's job (`evalrun.analysis.scoring`, and `evalrun.analysis.judges`
for the scorers that ask a model)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evalrun.config.params import RequestParams

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


NEED_REFERENCE = ("factuality", "closed_qa")  # ready-made rubrics that grade against a reference


class _Judge(_Scorer):
    """A scorer that asks a model. Its requests go through the run's pool, limiter, retries,
    journal and cost accounting like every other request."""

    model: str = Field(description="the judge model")
    provider: str | None = Field(None, description="default: the experiment's provider")
    rubric: str = Field(
        description="a ready-made rubric (factuality, closed_qa, instructions) or your own instructions; "
        "{column} placeholders are filled from the dataset row"
    )
    reference: str | None = Field(None, description="the reference answer, filled from the row, e.g. '{answer}'")
    params: RequestParams = Field(
        default_factory=lambda: RequestParams(temperature=0.0), description="the judge's request parameters"
    )

    @model_validator(mode="after")
    def _reference_where_needed(self) -> _Judge:
        if self.rubric in NEED_REFERENCE and self.reference is None:
            raise ValueError(f"rubric {self.rubric!r} compares with a reference: set reference: (e.g. '{{answer}}')")
        return self


class LabelModel(_Judge):
    """The judge answers one of `labels`; each label maps to a score. With `use_logprobs`, the
    score is the probability-weighted mean over the labels (G-Eval) where logprobs come back."""

    type: Literal["label_model"]
    labels: dict[str, float] | None = Field(None, description="label → score 0–1; default: the rubric's")
    passing: list[str] | None = Field(None, description="labels that pass; default: score >= threshold")
    threshold: float = Field(0.5, ge=0, le=1)
    use_logprobs: bool = False


class ScoreModel(_Judge):
    """The judge answers a number in `range`; score = its position in the range (0–1)."""

    type: Literal["score_model"]
    range: tuple[float, float] = Field((1.0, 10.0), description="lowest and highest grade")
    pass_at: float = Field(description="a grade at or above this passes")

    @model_validator(mode="after")
    def _in_range(self) -> ScoreModel:
        lo, hi = self.range
        if not lo < hi:
            raise ValueError(f"range: the lowest grade must be below the highest (got {list(self.range)})")
        if not lo <= self.pass_at <= hi:
            raise ValueError(f"pass_at {self.pass_at:g} is outside range {lo:g}–{hi:g}")
        return self


class Baseline(BaseModel):
    """The cell every other cell is compared with, item by item."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | None = None


class PairwiseModel(_Judge):
    """Which of two answers is better: each cell against `baseline`, asked in both orders to
    cancel position bias; score 1 win, 0.5 tie, 0 loss (orders that disagree make a tie)."""

    type: Literal["pairwise_model"]
    baseline: Baseline


JudgeConfig = LabelModel | ScoreModel | PairwiseModel
ScorerConfig = Annotated[
    ExactMatch
    | Contains
    | RegexMatch
    | NumericMatch
    | JsonValid
    | JsonSchemaMatch
    | ChoiceLogprobs
    | Custom
    | LabelModel
    | ScoreModel
    | PairwiseModel,
    Field(discriminator="type"),
]


class GateConfig(BaseModel):
    """Defaults for `evalrun compare` (the command line overrides them)."""

    model_config = ConfigDict(extra="forbid")
    scorer: str | None = Field(None, description="which scorer's pass rate gates; default the first")
    fail_on_drop: float = Field(0.02, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    min_passes: int | None = Field(
        None,
        ge=1,
        description="a dataset row counts as passing when at least this many of its answers "
        "(repeats × choices) pass; at most repeats × choices",
    )
