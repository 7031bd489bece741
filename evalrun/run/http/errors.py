"""The errors of one attempt of one request (the RequestError branch of `evalrun.errors`).

    RequestError                one attempt of one request failed (recorded, maybe retried)
    ├── TransportError          no HTTP answer: connect refused/reset, DNS, TLS
    │   └── AttemptTimeout      connected (or not) but no full answer within timeout_s
    ├── APIStatusError          HTTP status >= 400, with the provider's error envelope
    └── BadResponse             HTTP 200 that is not a usable completion
        ├── MalformedResponse   body is not JSON / lacks `choices`
        ├── ErrorIn200          body is an `{"error": …}` envelope
        └── StreamTruncated     an SSE stream that ended before `[DONE]`
    RedirectRefused             an HTTP 3xx: an API call is never redirected (an APIStatusError)
    StorageError                the run directory cannot take what must be written (disk full, …)

What to do about each request error is decided in one place: `evalrun.run.send.retry.classify`.
A StorageError is not a request's: it stops the run, which says how to resume.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from evalrun.errors import EvalrunError

if TYPE_CHECKING:
    from evalrun.run.records.records import Completion


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the disk (or a quota, or a size limit) is full


class RequestError(EvalrunError):
    """One attempt of one request failed."""

    error_type = "request_error"
    status_code: int | None = None
    retry_after: float | None = None
    partial: Completion | None = None  # a stream that failed midway: what had arrived


class TransportError(RequestError):
    """The server could not be reached, or the connection broke before an answer."""

    error_type = "connection_error"


class AttemptTimeout(TransportError):
    """No complete answer within the per-attempt timeout."""

    error_type = "timeout"


class APIStatusError(RequestError):
    """The server answered with an HTTP error status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        kind: str | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.code = code
        self.kind = kind
        self.body = body
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:  # type: ignore[override]
        return status_error_type(self.status_code or 0, self.code, self.kind, self.body)


class BadResponse(RequestError):
    """HTTP 200 whose body is not a usable completion."""

    def __init__(self, message: str, *, status_code: int | None = 200) -> None:
        super().__init__(message)
        self.status_code = status_code


class MalformedResponse(BadResponse):
    error_type = "malformed_response"


class ErrorIn200(BadResponse):
    error_type = "error_in_200"


class StreamTruncated(BadResponse):
    error_type = "stream_truncated"


def is_quota_error(status: int, code: str | None, kind: str | None, body: str) -> bool:
    """402, or a 429 whose envelope says the credits are gone rather than 'slow down'."""
    if status == 402:
        return True
    if status != 429:
        return False
    markers = (code or "", kind or "")
    return any("insufficient_quota" in m or "quota" in m for m in markers) or ("insufficient_quota" in body)


def status_error_type(status: int, code: str | None, kind: str | None, body: str) -> str:
    """A short stable name for an HTTP error, used as the `error_type` column."""
    if is_quota_error(status, code, kind, body):
        return "insufficient_quota"
    return {
        400: "invalid_request",
        401: "authentication",
        403: "permission",
        404: "not_found",
        408: "request_timeout",
        409: "conflict",
        413: "request_too_large",
        422: "invalid_request",
        429: "rate_limit",
    }.get(status, "server_error" if status >= 500 else f"http_{status}")


class RedirectRefused(APIStatusError):
    """An API answered with a redirect. It is not followed: aiohttp would turn the POST into a
    GET, and another origin's answer would be recorded as this base URL's."""

    def __init__(self, status_code: int, target: str) -> None:
        super().__init__(
            status_code,
            f"redirect to {target or '(no Location header)'} not followed; "
            "an API call is never redirected: if the API moved, put its new URL in base_urls",
        )
        self.target = target

    @property
    def error_type(self) -> str:  # type: ignore[override]
        return "redirect"


class StorageError(EvalrunError):
    """The run directory cannot take what must be written; the message says how to resume."""
