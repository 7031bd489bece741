"""The simulator's knobs: one mutable dataclass, its validation, and its CLI flags.

`SimOptions` is deliberately *not* frozen: tests and `POST /sim/options` flip fault
switches on a running server, and the server reads the same object on every request.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["SimOptions", "add_sim_arguments", "options_from_args", "update_options"]


@dataclass(slots=True)
class SimOptions:
    """Behaviour and fault switches of the simulator; mutable at runtime."""

    latency_ms: float | None = None
    per_token_ms: float | None = None
    latency_scale: float = 1.0
    seed: int = 0
    require_api_key: str | None = None
    unknown_models: tuple[str, ...] = ()
    strict_models: bool = False
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    rate_429: float = 0.0
    retry_after: str | None = "1"
    rate_500: float = 0.0
    status_5xx: int | None = None
    rate_hang: float = 0.0
    hang_s: float = 3600.0
    rate_malformed: float = 0.0
    rate_error_200: float = 0.0
    rate_null_usage: float = 0.0
    quota_after: int | None = None
    quota_status: int = 429
    fail_first: int = 0
    fail_first_status: int = 500

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _check(f.name, getattr(self, f.name)))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> SimOptions:
        """Build options from a config mapping; ValueError names the bad key or value."""
        options = cls()
        update_options(options, data)
        return options

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able view (tuples become lists)."""
        out = asdict(self)
        out["unknown_models"] = list(self.unknown_models)
        return out


# ---- validation: one checker per field -------------------------------------------------


def _number(name: str, value: object, lo: float, hi: float, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"simulator option {name!r} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"simulator option {name!r} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _integer(name: str, value: object, lo: int, hi: int, optional: bool) -> int | None:
    if value is None and optional:
        return None
    # YAML and JSON give 3.0 for "3" only when someone wrote 3.0; accept it, reject 3.5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"simulator option {name!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"simulator option {name!r} must be between {lo} and {hi}, got {value!r}")
    return value


def _opt_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"simulator option {name!r} must be a string, got {value!r}")
    return str(value)


def _models(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"simulator option {name!r} must be a list of model names, got {value!r}")
    return tuple(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"simulator option {name!r} must be true or false, got {value!r}")
    return value


def _status(name: str, value: object, allowed: frozenset[int], optional: bool = False) -> int | None:
    status = _integer(name, value, 100, 599, optional)
    if status is not None and status not in allowed:
        raise ValueError(f"simulator option {name!r} must be one of {sorted(allowed)}, got {value!r}")
    return status


_BIG = 10**12
_ERROR_STATUSES = frozenset({400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 504})
_CHECKS: dict[str, Callable[[str, object], object]] = {
    "latency_ms": lambda n, v: _number(n, v, 0, 1e7, True),
    "per_token_ms": lambda n, v: _number(n, v, 0, 1e5, True),
    "latency_scale": lambda n, v: _number(n, v, 0, 1e4, False),
    "seed": lambda n, v: _integer(n, v, -(2**63), 2**63 - 1, False),
    "require_api_key": _opt_str,
    "unknown_models": _models,
    "strict_models": _flag,
    "rpm_limit": lambda n, v: _integer(n, v, 1, _BIG, True),
    "tpm_limit": lambda n, v: _integer(n, v, 1, _BIG, True),
    "rate_429": lambda n, v: _number(n, v, 0, 1, False),
    "retry_after": _opt_str,
    "rate_500": lambda n, v: _number(n, v, 0, 1, False),
    "status_5xx": lambda n, v: _status(n, v, frozenset({500, 502, 503, 504}), optional=True),
    "rate_hang": lambda n, v: _number(n, v, 0, 1, False),
    "hang_s": lambda n, v: _number(n, v, 0, 1e7, False),
    "rate_malformed": lambda n, v: _number(n, v, 0, 1, False),
    "rate_error_200": lambda n, v: _number(n, v, 0, 1, False),
    "rate_null_usage": lambda n, v: _number(n, v, 0, 1, False),
    "quota_after": lambda n, v: _integer(n, v, 0, _BIG, True),
    "quota_status": lambda n, v: _status(n, v, frozenset({402, 429})),
    "fail_first": lambda n, v: _integer(n, v, 0, _BIG, False),
    "fail_first_status": lambda n, v: _status(n, v, _ERROR_STATUSES),
}


def _check(name: str, value: object) -> Any:
    return _CHECKS[name](name, value)


def update_options(options: SimOptions, data: Mapping[str, object]) -> None:
    """Validate every key of `data` first, then apply them all (all or nothing)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"simulator options must be a mapping, got {type(data).__name__}")
    checked: dict[str, object] = {}
    for key, value in data.items():
        if key not in _CHECKS:
            known = ", ".join(sorted(_CHECKS))
            raise ValueError(f"unknown simulator option {key!r} (known: {known})")
        checked[key] = _check(key, value)
    for key, value in checked.items():
        setattr(options, key, value)


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
        "--strict-models",
        action="store_true",
        default=None,
        help="answer 404 for any model other than the three Gemini models",
    )


def options_from_args(ns: argparse.Namespace) -> SimOptions:
    """Turn parsed `add_sim_arguments` flags into SimOptions; ValueError on bad values."""
    data: dict[str, object] = {}
    for name in _CHECKS:
        value = getattr(ns, name, None)
        if value is not None:
            data[name] = value
    if isinstance(data.get("retry_after"), str) and data["retry_after"].strip().lower() in ("", "none"):
        data["retry_after"] = None
    return SimOptions.from_mapping(data)
