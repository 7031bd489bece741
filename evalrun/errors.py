"""The exceptions evalrun raises and records.

    EvalrunError
    ├── ConfigError                 bad experiment file / CLI input → exit code 2, nothing sent
    └── RequestError                one attempt of one request failed (recorded, maybe retried)
        ├── TransportError          no HTTP answer: connect refused/reset, DNS, TLS
        │   └── AttemptTimeout      connected (or not) but no full answer within timeout_s
        ├── APIStatusError          HTTP status >= 400, with the provider's error envelope
        └── BadResponse             HTTP 200 that is not a usable completion
            ├── MalformedResponse   body is not JSON / lacks `choices`
            ├── ErrorIn200          body is an `{"error": …}` envelope
            └── StreamTruncated     an SSE stream that ended before `[DONE]`

What to do about each is decided in one place: `evalrun.run.send.retry.classify`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


class EvalrunError(Exception):
    """Base of every error evalrun raises on purpose."""


class ConfigError(EvalrunError):
    """The experiment file or a command-line value is wrong; the message says where and why."""
