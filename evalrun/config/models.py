"""The experiment file's schema: strict pydantic models with the API's ranges.

Loading (YAML with line numbers, `--set`, the `grid:` block) is `load.py`'s job; these models
only say what is allowed, so the error wording in `diagnostics.py` can name it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from evalrun.config.credentials import header_problem, is_credential_header, looks_like_key
from evalrun.config.diagnostics import NAME_PATTERN, did_you_mean
from evalrun.config.grid import GridConfig
from evalrun.config.locations import check_location
from evalrun.config.params import PARAM_NAMES, RequestParams
from evalrun.config.prices import PricesConfig
from evalrun.config.scorers import GateConfig, ScorerConfig
from evalrun.sim.options import SimOptions

_NAME = NAME_PATTERN
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_limiter_url(url: str) -> str:
    """redis://HOST:PORT/DB (or rediss:// for TLS); the error names what is allowed."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    db = parts.path.lstrip("/")
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or port == -1
        or (db and not db.isdigit())
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"{url!r} is not a Redis URL; expected redis://HOST:PORT/DB (or rediss:// for TLS)")
    if parts.password or parts.username:
        raise ValueError("a password in the limiter URL would put a secret in the config; use REDIS_PASSWORD")
    return url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    """A named endpoint (or the embedded simulator) and its limits."""

    preset: Literal["evolink", "simulator"] | None = None
    kind: Literal["openai", "simulator"] = "openai"
    base_urls: list[str] = Field(default_factory=list)
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(180.0, gt=0, le=3600, description="per attempt")
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    max_concurrency: int = Field(16, ge=1, le=2000)
    rpm: int | None = Field(
        None, ge=1, le=10**9, description="requests per minute per model; auto (the default): learn the server's"
    )
    tpm: int | None = Field(None, ge=1, le=10**12, description="tokens per minute per model")
    fallback_after: int = Field(3, ge=1, le=100, description="failures before the next base URL")
    limiter: str | None = Field(None, description="redis://HOST:PORT/DB: share rpm/tpm with every process using it")
    allow_insecure_http: bool = False
    extra_models: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="models a preset does not list yet (checked names: the preset's and these)",
    )
    # the simulator owns its knobs' schema; embedded here, its errors name the exact key and line
    simulator: SimOptions = Field(default_factory=SimOptions)

    @field_validator("rpm", mode="before")
    @classmethod
    def _rpm_auto(cls, v: Any) -> Any:
        # "auto" is the default spelled out: learn the limit from the server (run/rate/adaptive.py)
        return None if v == "auto" else v

    @field_validator("limiter")
    @classmethod
    def _limiter(cls, v: str | None) -> str | None:
        return None if v is None else check_limiter_url(v)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and looks_like_key(v):  # not repeated in the message: it may be a key
            raise ValueError(
                "the value looks like an API key itself, not the NAME of an environment variable; put the key "
                "in a variable (export EVOLINK_API_KEY=…) and write that variable's name here"
            )
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (like EVOLINK_API_KEY), never the key itself"
            )
        return v

    @field_validator("headers")
    @classmethod
    def _no_literal_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if is_credential_header(name):
                raise ValueError(
                    f"header {name!r} would put a secret in the config file; set the key in an "
                    "environment variable and name it with api_key_env"
                )
            problem = header_problem(name, value)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL like https://host/v1")
            try:
                port = parts.port
            except ValueError:  # urlsplit's own words: "Port out of range 0-65535", "invalid literal…"
                port = -1
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
        return [u.rstrip("/") for u in v]

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        if self.kind == "simulator":
            if self.base_urls:
                raise ValueError("kind: simulator starts its own server; drop base_urls")
            if self.extra_models:  # served by the simulator too: one list says what it answers
                self.simulator.extra_models = tuple(dict.fromkeys((*self.simulator.extra_models, *self.extra_models)))
        else:
            if "simulator" in self.model_fields_set:
                raise ValueError("simulator options need kind: simulator")
            if not self.base_urls:
                raise ValueError("base_urls needs at least one URL, e.g. [https://host/v1]")
        if self.api_key_env and not self.allow_insecure_http:
            for url in self.base_urls:
                parts = urlsplit(url)
                if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                    raise ValueError(
                        f"{url} is plain http to a non-loopback host: the API key would travel "
                        "unencrypted. Use https, or set allow_insecure_http: true"
                    )
        return self


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (plain http and the simulator's repeat
    header are allowed only there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PRESETS: dict[str, dict[str, Any]] = {
    "evolink": {
        "preset": "evolink",  # recorded on a provider named after it too: its model names are checked
        "kind": "openai",
        "base_urls": ["https://direct.evolink.ai/v1", "https://api.evolink.ai/v1"],
        "api_key_env": "EVOLINK_API_KEY",
        "max_concurrency": 16,
    },
    "simulator": {"preset": "simulator", "kind": "simulator", "max_concurrency": 32},
}


class ModelEntry(_Strict):
    """A model to evaluate, optionally on a named provider and with its own parameters."""

    name: str = Field(min_length=1)
    provider: str | None = None
    params: RequestParams = Field(default_factory=RequestParams)


class MessageTemplate(_Strict):
    """One message of a prompt variant; `{column}` placeholders are filled per dataset row."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]]
    name: str | None = None
    tool_call_id: str | None = None


class FromColumn(_Strict):
    """A prompt entry standing for the row's own list of messages, e.g. a conversation column."""

    from_column: str = Field(min_length=1, description="dataset column holding a list of messages")

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, v: Any) -> Any:
        if isinstance(v, dict) and "from_column" in v and len(v) > 1:
            other = next(k for k in v if k != "from_column")
            raise ValueError(f"from_column stands for all of the row's messages and takes no other key (got {other!r})")
        return v


def _entry_kind(value: Any) -> str:
    # a misspelt from_column (from_colum) is reported as that, not as a message missing its role
    is_column = isinstance(value, dict) and any(str(k).startswith("from") for k in value)
    return "FromColumn" if is_column else "MessageTemplate"


# Tagged by the presence of from_column, so an error names one kind of entry, not both; the tags
# are model names, which error paths drop like pydantic's own union tags.
PromptEntry = Annotated[
    Annotated[MessageTemplate, Tag("MessageTemplate")] | Annotated[FromColumn, Tag("FromColumn")],
    Discriminator(_entry_kind),
]


class DatasetConfig(_Strict):
    """Where the rows are, how to read them, and which columns set request parameters per row."""

    path: str
    format: Literal["jsonl", "csv", "parquet"] | None = None
    id_column: str | None = None
    limit: int | None = Field(None, ge=1)
    params_from_columns: dict[str, str] = Field(
        default_factory=dict, description="request parameter → the column holding each row's value"
    )

    @field_validator("path")
    @classmethod
    def _location(cls, v: str) -> str:
        return check_location(v, "dataset")

    @field_validator("params_from_columns")
    @classmethod
    def _parameters(cls, v: dict[str, str]) -> dict[str, str]:
        for name, column in v.items():
            if name not in PARAM_NAMES:
                raise ValueError(
                    f"{name!r} is not a request parameter{did_you_mean(name, PARAM_NAMES)}; "
                    f"allowed: {', '.join(PARAM_NAMES)}"
                )
            if not column:
                raise ValueError(f"{name}: name the dataset column that holds it")
        return v


class RetryConfig(_Strict):
    max_attempts: int = Field(5, ge=1, le=50, description="attempts per request, first included")
    max_total_s: float = Field(900.0, gt=0, description="time budget per request, waits included")
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0, description="cap on a server's Retry-After")


class BudgetConfig(_Strict):
    max_requests: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0, description="in the price table's currency")


class ExperimentConfig(_Strict):
    """The whole experiment file."""

    experiment: str = Field(pattern=_NAME)
    description: str | None = None
    provider: str | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(min_length=1)
    params: RequestParams = Field(default_factory=RequestParams)
    grid: GridConfig = Field(default_factory=GridConfig)
    prompts: dict[Annotated[str, Field(pattern=_NAME)], list[PromptEntry]] = Field(min_length=1)
    dataset: DatasetConfig
    repeats: int = Field(1, ge=1, le=100_000)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    prices: PricesConfig | str | None = None
    scorers: list[ScorerConfig] = Field(default_factory=list)
    gate: GateConfig = Field(default_factory=GateConfig)
    reports_dir: str = "reports"
    cache: bool | str | None = Field(
        None,
        description="keep successful answers and serve an identical request from them: true "
        "(under reports_dir/cache) or a folder",
    )
    limiter: str | None = Field(None, description="redis://HOST:PORT/DB for every provider without its own")

    @field_validator("limiter")
    @classmethod
    def _limiter(cls, v: str | None) -> str | None:
        return None if v is None else check_limiter_url(v)

    @field_validator("reports_dir")
    @classmethod
    def _reports_location(cls, v: str) -> str:
        return check_location(v, "reports_dir")

    @model_validator(mode="after")
    def _default_limiter(self) -> ExperimentConfig:
        if self.limiter:
            for p in self.providers.values():
                if p.limiter is None:
                    p.limiter = self.limiter
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[ModelEntry]) -> list[ModelEntry]:
        seen: set[tuple[str, str | None]] = set()
        for m in v:
            key = (m.name, m.provider)
            if key in seen:
                where = f" on provider {m.provider!r}" if m.provider else ""
                raise ValueError(f"model {m.name!r} is listed twice{where}; list each model once per provider")
            seen.add(key)
        return v

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("providers", mode="before")
    @classmethod
    def _presets(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, p in v.items():
            if isinstance(p, dict):
                preset = p.get("preset") or (name if name in PRESETS else None)
                if preset in PRESETS:
                    p = {**PRESETS[preset], **p}
            out[name] = p
        return out

    @field_validator("prompts")
    @classmethod
    def _has_user(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, messages in v.items():
            # a from_column entry brings the row's messages; the dataset pass checks them
            if not any(isinstance(m, FromColumn) or m.role == "user" for m in messages):
                raise ValueError(f"prompt {name!r} has no user message (nor a from_column: entry)")
        return v
