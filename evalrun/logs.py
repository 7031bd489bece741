"""Logging setup with secret redaction: no API key reaches a log line, whatever logs it."""

from __future__ import annotations

import logging
import re
import sys

_BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"((?:authorization|api-key|x-api-key)['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+", re.IGNORECASE)


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
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


REDACT = RedactSecrets()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (it is swapped by test runners and rich)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(verbose: int = 0) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("evalrun: %(levelname)s: %(message)s"))
    handler.addFilter(REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
