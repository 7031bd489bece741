"""The journal: append-only, one JSON line per finished request, flushed before the request
counts as done. It is the source of truth while a run goes; results.parquet is built from it.

A line cut by a crash is ignored on reading, so a killed run resumes from exactly the
requests whose line is complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
JUDGE_JOURNAL = "judge_journal.jsonl"  # the judge requests of a run (same format)


class Journal:
    """Append-only, flushed per request: what is in it survives kill -9."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("ab", buffering=1 << 16)

    def append(self, request_id: str, status: str, error_type: str | None, rows: list[dict[str, Any]]) -> None:
        line = orjson.dumps({"id": request_id, "status": status, "error_type": error_type, "rows": rows})
        self._f.write(line + b"\n")
        self._f.flush()  # to the OS: the process may die, the kernel keeps it

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete entry; a torn last line (crash mid-write) is skipped."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                logger.info("journal %s: ignoring a torn last line %d (crash mid-write)", path, lineno)
                return
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning("journal %s: ignoring unreadable line %d", path, lineno)
                continue
            yield entry


def journal_state(path: Path) -> dict[str, tuple[str, str | None]]:
    """request_id → (status, error_type) of its latest entry, for resume."""
    return {e["id"]: (e["status"], e.get("error_type")) for e in read_journal(path)}


def repair_journal(path: Path) -> None:
    """Cut a torn last line so that new entries start on a line of their own."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # walk back to the last newline
        pos = size - 1
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos - step + nl + 1)
                return
            pos -= step
        f.truncate(0)
