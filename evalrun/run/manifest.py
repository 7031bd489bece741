"""The typed face of manifest.json: one record, its statuses and the error_type names.

Writers and readers still use the dict today; this record is the first step of moving them over
(issue 25 item 2). It is lenient on purpose: every key is optional (older manifests lack many)
and unknown keys are kept (`extra="allow"`) so a manifest from newer code survives a read and
write by older code, and the other way round.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST_VERSION = 1  # manifests without `version` predate the record: read as version 0


class RunStatus(StrEnum):
    """A run's status in manifest.json; str values so the JSON stays byte-identical."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


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


class ManifestError(ValueError):
    """manifest.json cannot be read as a manifest; the message names the file."""


class Manifest(BaseModel):
    """manifest.json. Only the keys every reader relies on are typed; the rest ride in extras."""

    model_config = ConfigDict(extra="allow")

    version: int = 0
    status: RunStatus | None = None
    started_at: str | None = None
    evalrun_version: str | None = None
    argv: list[str] | None = None
    config: dict[str, Any] | None = None
    grid: dict[str, Any] | None = None
    data_columns: list[str] | None = None
    cells: list[dict[str, Any]] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The dict to write: absent keys stay absent, so an old manifest round-trips unchanged."""
        return self.model_dump(mode="json", exclude_unset=True)


def read_manifest(path: Path) -> Manifest:
    """Read and validate one manifest.json, with an error naming the file on bad content."""
    try:
        raw = json.loads(path.read_text())
        return Manifest.model_validate(raw)
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(first[:3]) if first else type(exc).__name__
        raise ManifestError(f"{path}: not a valid manifest: {detail}") from None
