"""The one decision function and its inputs, as tables."""

from __future__ import annotations

import email.utils

import pytest

from evalrun.run.http.errors import (
    APIStatusError,
    AttemptTimeout,
    ErrorIn200,
    MalformedResponse,
    StreamTruncated,
    TransportError,
)
from evalrun.run.rate.ratelimits import parse_retry_after
from evalrun.run.send.retry import Action, backoff, classify, retry_wait


def status(
    code: int, body: str = "", code_field: str | None = None, kind: str | None = None, ra: float | None = None
) -> APIStatusError:
    return APIStatusError(code, "msg", code=code_field, kind=kind, body=body, retry_after=ra)


@pytest.mark.parametrize(
    "exc, action, reason",
    [
        (status(400), Action.FAIL, "invalid_request"),
        (status(413), Action.FAIL, "request_too_large"),
        (status(422), Action.FAIL, "invalid_request"),
        (status(401), Action.STOP_PROVIDER, "authentication"),
        (status(403), Action.STOP_PROVIDER, "permission"),
        (status(402), Action.STOP_PROVIDER, "insufficient_quota"),
        (status(429, code_field="insufficient_quota"), Action.STOP_PROVIDER, "insufficient_quota"),
        (status(429, kind="insufficient_quota"), Action.STOP_PROVIDER, "insufficient_quota"),
        (
            status(429, body='{"error":{"message":"x","type":"insufficient_quota"}}'),
            Action.STOP_PROVIDER,
            "insufficient_quota",
        ),
        (status(429), Action.RETRY, "rate_limit"),
        (status(404), Action.FAIL_MODEL, "not_found"),
        (status(408), Action.RETRY, "request_timeout"),
        (status(500), Action.RETRY, "server_error"),
        (status(502), Action.RETRY, "server_error"),
        (status(503), Action.RETRY, "server_error"),
        (status(504), Action.RETRY, "server_error"),
        (TransportError("refused"), Action.RETRY, "connection_error"),
        (AttemptTimeout("slow"), Action.RETRY, "timeout"),
        (MalformedResponse("cut"), Action.RETRY, "malformed_response"),
        (ErrorIn200("oops"), Action.RETRY, "error_in_200"),
        (StreamTruncated("cut"), Action.RETRY, "stream_truncated"),
        (ValueError("bug"), Action.FAIL, "internal_error"),
    ],
)
def test_classify(exc: BaseException, action: Action, reason: str) -> None:
    d = classify(exc)
    assert (d.action, d.reason) == (action, reason)


def test_classify_details() -> None:
    assert classify(status(429, ra=7)).wait_s == 7
    assert classify(status(429)).rate_limited
    assert classify(status(503)).wait_s == 5.0  # a 503 without Retry-After still waits
    assert classify(status(500)).counts_for_fallback
    assert classify(TransportError("x")).counts_for_fallback
    assert not classify(status(400)).counts_for_fallback
    assert classify(MalformedResponse("x")).max_attempts == 3


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("3", 3.0),
        ("1.5", 1.5),
        ("  12 ", 12.0),
        ("-1", None),
        ("nan", None),
        ("inf", float("inf")),  # capped by the caller
        ("soon", None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # a date in the past: go now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    got = parse_retry_after(header, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1.0)


def test_retry_wait_caps_server_value_and_backs_off() -> None:
    assert retry_wait(classify(status(429, ra=1e9)), 1, 1.0, 30.0, 120.0) == 120.0
    assert retry_wait(classify(status(429, ra=float("inf"))), 1, 1.0, 30.0, 120.0) == 120.0
    assert retry_wait(classify(status(429, ra=2)), 1, 1.0, 30.0, 120.0) == 2
    waits = [backoff(a, 1.0, 30.0) for a in range(1, 12)]
    for attempt, w in enumerate(waits, 1):
        ceiling = min(30.0, 2 ** (attempt - 1))
        assert 0.5 * ceiling <= w <= ceiling
    assert max(waits) <= 30.0
