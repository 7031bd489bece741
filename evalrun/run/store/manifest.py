"""manifest.json as one typed record: `Manifest`, its `RunStatus`, and the `ErrorType` names.

Every command reads a run's manifest as this record (through `manifest_io`, which is also its
one writer). It is lenient on purpose, because manifests outlive the code that wrote them:

- every key is optional: a manifest written before a key existed still reads (`version` 0 is
  one written before this record);
- unknown keys are kept (`extra="allow"`) and written back, so a newer evalrun's keys survive
  a resume by this one;
- the JSON keeps the names it always had (plus `version`), and a key is written only once it
  was read or set (`exclude_unset`): an older evalrun, which reads the manifest as a plain
  dict by these names, still reads a manifest written by this one.

`config` (the experiment's YAML as resolved), `providers`, `learned_limits` and the per-resume
and per-shard notes stay mappings: they are the user's YAML or free-form records that their
own readers check entry by entry.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, PrivateAttr, model_validator

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1  # manifests without `version` predate the record: read as version 0
REBUILT = "rebuilt"  # manifest key: why the manifest was rebuilt from the config and journal


class RunStatus(StrEnum):
    """A run's status in manifest.json; str values so the JSON stays byte-identical."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    UNPUBLISHED = "unpublished"  # finished, but its object store did not take it


class ErrorType(StrEnum):
    """The known values of the error_type column. The set is open (`http_NNN` for unlisted
    statuses), so columns stay plain strings; compare against these members."""

    REQUEST_ERROR = "request_error"
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    MALFORMED_RESPONSE = "malformed_response"
    ERROR_IN_200 = "error_in_200"
    STREAM_TRUNCATED = "stream_truncated"
    INTERNAL_ERROR = "internal_error"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    REQUEST_TIMEOUT = "request_timeout"
    CONFLICT = "conflict"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"


class _Open(BaseModel):
    """A part of the manifest: unknown keys kept, every key optional (see the module doc)."""

    model_config = ConfigDict(extra="allow")


class GridInfo(_Open):
    """`grid`: the experiment's size."""

    cells: int | None = None
    rows: int | None = None
    repeats: int | None = None
    requests: int | None = None
    dataset: str | None = None


class CellInfo(_Open):
    """One entry of `cells`: a provider × model × prompt × params cell."""

    cell_id: str | None = None
    provider: str | None = None
    model: str | None = None
    prompt_id: str | None = None
    params: dict[str, Any] = {}


class Counts(_Open):
    """`counts`: how many requests the grid holds, have a row, are missing, ok or errors."""

    requests: int = 0
    recorded: int = 0
    missing: int = 0
    ok: int = 0
    errors: int = 0
    rows: int = 0
    this_session: dict[str, Any] | None = None


class PricesInfo(_Open):
    """`prices`: the price table the run's costs were computed with, and where it came from."""

    source: str | None = None
    currency: str | None = None
    as_of: str | None = None
    models: dict[str, Any] = {}


class WorkersInfo(_Open):
    """`workers`: the --workers run this manifest is the parent of."""

    count: int
    shared_limiter: bool = False


class ShardInfo(_Open):
    """`shard`: which shard of a sharded run this is."""

    index: int
    count: int


class Manifest(_Open):
    """manifest.json (see the module doc for why every key is optional and unknown ones stay)."""

    version: int = 0
    run_id: str | None = None
    experiment: str | None = None
    status: RunStatus | None = None
    config_path: str | None = None
    overrides: list[str] = []
    limit: int | None = None
    grid_fingerprint: str | None = None
    grid_changed: bool = False
    shard: ShardInfo | None = None
    location: str | None = None  # the object-storage URL the run is published to
    workers: WorkersInfo | None = None
    started_at: str | None = None
    finished_at: str | None = None
    merged_at: str | None = None
    evalrun_version: str | None = None
    versions: dict[str, str] | None = None
    argv: list[str] | None = None
    config: dict[str, Any] | None = None  # the experiment's YAML as resolved (after --set)
    prices: PricesInfo | None = None
    providers: dict[str, Any] | None = None
    grid: GridInfo | None = None
    data_columns: list[str] | None = None
    dataset_hash: str | None = None  # the dataset file's content: `history` marks the night it changed
    decided: dict[str, Any] | None = None  # --stop-when-decided: {cells: {id: {verdict, rows, answered}}, skipped}
    cells: list[CellInfo] = []
    scorers: list[dict[str, Any]] | None = None  # those `evalrun score` applied last
    resumes: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] | None = None  # a merged run's shards: dir, run id, status, counts
    counts: Counts | None = None
    messages: list[str] = []
    learned_limits: dict[str, Any] | None = None  # 'provider/model' → {rpm, source}; checked per entry
    pace_held_by: list[str] | None = None  # this session's only: taken out before the manifest is written
    stop_reason: str | None = None
    resume: str | None = None  # the command that continues the run
    publish_error: str | None = None
    rebuilt: str | None = None  # why the manifest was rebuilt from the config and journal

    _order: list[str] = PrivateAttr(default_factory=list)  # the keys as read, in their order

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: ModelWrapValidatorHandler[Manifest]) -> Manifest:
        manifest = handler(data)
        if isinstance(data, dict):
            manifest._order = list(data)
        return manifest

    def to_json_dict(self) -> dict[str, Any]:
        """The dict to write: absent keys stay absent and read ones keep their order, so an old
        manifest round-trips unchanged."""
        out = self.model_dump(exclude_unset=True)  # orjson writes it as the dict was before
        return {k: out[k] for k in self._order if k in out} | out

    def drop(self, key: str) -> None:
        """Take a key out of the manifest (it is not written), as `dict.pop` did."""
        if key in type(self).model_fields:
            self.__dict__[key] = type(self).model_fields[key].get_default(call_default_factory=True)
            self.model_fields_set.discard(key)
        elif self.model_extra is not None:
            self.model_extra.pop(key, None)
