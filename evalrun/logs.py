"""Logging on the `evalrun` logger tree only, with secret redaction: no API key reaches a log
line, whatever logs it.

The handler sits on the `evalrun` logger, not the root: other libraries' records (asyncio's
"Task was destroyed", aiohttp's access log) keep Python's default handling instead of being
dressed up as evalrun errors, and an application embedding evalrun keeps its own root setup.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

_BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"((?:authorization|api-key|x-api-key)['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+", re.IGNORECASE)
MIN_SECRET_CHARS = 8  # shorter values are not keys, and masking them would mangle ordinary words

logger = logging.getLogger("evalrun")


class RedactSecrets(logging.Filter):
    """Replaces bearer tokens, auth headers and the run's known keys with ***."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        text = _BEARER.sub(r"\1***", text)
        text = _AUTH_HEADER.sub(r"\1***", text)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


REDACT = RedactSecrets()


def add_secret(value: str) -> None:
    """Mask this value (a run's API key) in every evalrun log line from now on."""
    if len(value) >= MIN_SECRET_CHARS:
        REDACT.secrets.add(value)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (it is swapped by test runners and rich)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(verbose: int = 0) -> None:
    """-v: INFO (retries, fallbacks), -vv: DEBUG. Idempotent: calling it twice adds no handler."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("evalrun: %(levelname)s: %(message)s"))
    handler.addFilter(REDACT)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False  # our handler formats it; the root's would print it a second time
