"""The simulator's knobs: one pydantic model (the same validation style as the experiment
file, which embeds it as `providers.<name>.simulator`), and its CLI flags.

`SimOptions` is deliberately *not* frozen: tests and `POST /sim/options` flip fault
switches on a running server, and the server reads the same object on every request.
Assignments are validated too, so a running server can never hold an out-of-range knob.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from evalrun.sim.wire import KNOWN_MODELS

__all__ = ["SimOptions", "add_sim_arguments", "options_from_args", "update_options"]

_BIG = 10**12
Probability = Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=_BIG)]
ErrorStatus = Literal[400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 504]


class SimOptions(BaseModel):
    """Behaviour and fault switches of the simulator; mutable at runtime."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: Millis | None = Field(None, le=1e7, description="fixed base latency per request (default: per model)")
    per_token_ms: Millis | None = Field(None, le=1e5, description="extra latency per generated token")
    latency_scale: Millis = Field(1.0, le=1e4, description="multiplies all latency; 0 never sleeps")
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1, description="changes every deterministic answer and fault")
    require_api_key: str | None = Field(None, description="answer 401 unless this bearer key is sent")
    unknown_models: tuple[str, ...] = Field((), description="answer 404 for these models")
    # strict by default: the simulator stands in for the EvoLink catalog, and a misspelt model
    # name must fail here as it would there, not be answered like a real one
    strict_models: StrictBool = Field(True, description="404 for any model it does not serve (served_models())")
    extra_models: tuple[str, ...] = Field((), description="served besides the three Gemini ones")
    rpm_limit: int | None = Field(None, ge=1, le=_BIG, description="requests per sliding 60 s window per model")
    tpm_limit: int | None = Field(None, ge=1, le=_BIG, description="tokens per sliding 60 s window per model")
    rate_429: Probability = Field(0.0, description="probability of a random 429")
    retry_after: str | None = Field("1", description="Retry-After of random 429s: seconds or an HTTP date")
    rate_500: Probability = Field(0.0, description="probability of a random 5xx")
    status_5xx: Literal[500, 502, 503, 504] | None = None
    rate_hang: Probability = Field(0.0, description="probability of never answering")
    hang_s: Millis = Field(3600.0, le=1e7, description="how long a hung request waits before a 504")
    rate_malformed: Probability = Field(0.0, description="probability of a truncated JSON body")
    rate_error_200: Probability = Field(0.0, description="probability of a 200 with an error envelope")
    rate_null_usage: Probability = Field(0.0, description="probability of null or incomplete usage")
    quota_after: Count | None = Field(None, description="after this many answers, insufficient_quota")
    quota_status: Literal[402, 429] = 429
    fail_first: Count = Field(0, description="the first N requests fail with fail_first_status")
    fail_first_status: ErrorStatus = 500

    @field_validator("unknown_models", "extra_models", mode="before")
    @classmethod
    def _one_model(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else v

    @field_validator("require_api_key", "retry_after", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        # YAML reads `retry_after: 1` as a number; the header is text either way
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | SimOptions) -> SimOptions:
        """Build options from a config mapping; ValueError names the bad key or value."""
        if isinstance(data, SimOptions):
            return data.model_copy()
        options = cls()
        update_options(options, data)
        return options

    def served_models(self) -> tuple[str, ...]:
        """The model names it answers and lists at GET /v1/models."""
        return tuple(dict.fromkeys((*KNOWN_MODELS, *self.extra_models)))

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able view (tuples become lists)."""
        return self.model_dump(mode="json")


def _message(exc: ValidationError) -> str:
    """One line per problem, naming the option: what `POST /sim/options` and serve-sim print."""
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "options"
        if err["type"] == "extra_forbidden":
            known = ", ".join(SimOptions.model_fields)
            parts.append(f"unknown simulator option {name!r} (known: {known})")
        else:
            parts.append(f"simulator option {name!r}: {err['msg']}, got {err['input']!r}")
    return "; ".join(parts)


def update_options(options: SimOptions, data: Mapping[str, object]) -> None:
    """Validate every key of `data` first, then apply them all (all or nothing)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"simulator options must be a mapping, got {type(data).__name__}")
    try:
        checked = SimOptions.model_validate({**options.model_dump(), **data})
    except ValidationError as exc:
        raise ValueError(_message(exc)) from None
    for key in data:
        setattr(options, key, getattr(checked, key))


# ---- command line -------------------------------------------------------------------------


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `serve-sim` flags; each defaults to None so unset flags keep SimOptions defaults."""
    g = parser.add_argument_group("simulator")
    g.add_argument("--port", type=int, default=8089, help="TCP port on 127.0.0.1 (default 8089; 0 picks a free one)")
    g.add_argument("--latency-ms", type=float, help="fixed base latency per request in ms (default: per model)")
    g.add_argument(
        "--per-token-ms", type=float, help="extra latency per generated token, thinking included (default: per model)"
    )
    g.add_argument("--latency-scale", type=float, help="multiply all latency; 0 never sleeps (default 1)")
    g.add_argument("--seed", type=int, help="changes every deterministic answer and fault draw (default 0)")
    g.add_argument("--require-api-key", metavar="KEY", help="answer 401 unless 'Authorization: Bearer KEY' is sent")
    g.add_argument(
        "--rpm-limit", type=int, help="requests per sliding 60 s window per model; more get 429 + Retry-After"
    )
    g.add_argument(
        "--tpm-limit", type=int, help="prompt+completion tokens per sliding 60 s window per model; more get 429"
    )
    g.add_argument("--rate-429", type=float, help="probability of a random 429 rate_limit_error")
    g.add_argument(
        "--retry-after",
        help="Retry-After value sent with random 429s: seconds or an HTTP date; 'none' omits it (default 1)",
    )
    g.add_argument("--rate-500", type=float, help="probability of a random 5xx (500/502/503/504 unless --status-5xx)")
    g.add_argument("--status-5xx", type=int, choices=(500, 502, 503, 504), help="status used by --rate-500")
    g.add_argument("--rate-hang", type=float, help="probability of accepting a request and never answering")
    g.add_argument(
        "--hang-s", type=float, help="how long a hung request waits before giving up with 504 (default 3600)"
    )
    g.add_argument("--rate-malformed", type=float, help="probability of a 200 whose JSON body is truncated")
    g.add_argument("--rate-error-200", type=float, help="probability of a 200 whose body is an error envelope")
    g.add_argument("--rate-null-usage", type=float, help="probability of a success whose usage is null or incomplete")
    g.add_argument(
        "--quota-after", type=int, help="after this many successful answers every request gets insufficient_quota"
    )
    g.add_argument("--quota-status", type=int, choices=(402, 429), help="status of the quota error (default 429)")
    g.add_argument("--fail-first", type=int, help="the first N requests fail with --fail-first-status")
    g.add_argument("--fail-first-status", type=int, help="status for --fail-first (default 500)")
    g.add_argument(
        "--unknown-model",
        action="append",
        dest="unknown_models",
        metavar="MODEL",
        help="answer 404 not_found_error for this model (repeatable)",
    )
    g.add_argument(
        "--model",
        action="append",
        dest="extra_models",
        metavar="MODEL",
        help="also serve this model besides the three Gemini ones (repeatable)",
    )
    g.add_argument(
        "--strict-models",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer 404 model_not_found for a model it does not serve (default: on; --no-strict-models answers any)",
    )


def options_from_args(ns: argparse.Namespace) -> SimOptions:
    """Turn parsed `add_sim_arguments` flags into SimOptions; ValueError on bad values."""
    data: dict[str, object] = {}
    for name in SimOptions.model_fields:
        value = getattr(ns, name, None)
        if value is not None:
            data[name] = value
    retry_after = data.get("retry_after")
    if isinstance(retry_after, str) and retry_after.strip().lower() in ("", "none"):
        data["retry_after"] = None
    return SimOptions.from_mapping(data)
