"""The journal: append-only, one line per finished request, written before the request
counts as done. It is the source of truth while a run goes; results.parquet is built from it
on resume. Each line is the entry's JSON, compact and compressed (see `framing.py`: ~1.5 KB
instead of ~9.5 KB per request with top-5 logprobs); plain JSON lines are read too.

A line cut by a crash is ignored on reading, so a killed run resumes from exactly the
requests whose line is complete. A line that is not an entry (garbage appended by hand or by
a broken disk: an array, `null`, an object without an id, rows that are not a list of
objects) is skipped and reported with its line number; the rest of the journal is kept.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from evalrun.run.http.errors import FULL_ERRNOS, StorageError
from evalrun.run.records.secrets import mask_bytes
from evalrun.run.store.framing import LineError, decode, encode

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
JUDGE_JOURNAL = "judge_journal.jsonl"  # the judge requests of a run (same format)
STATUSES = ("ok", "error")
REPORTED_LINES = 5  # bad lines named one by one; beyond that, a count


class Journal:
    """Append-only, one write(2) per request: what is in it survives kill -9.

    Unbuffered on purpose: after a failed write (disk full) nothing of that entry may linger
    in a buffer to be glued to the next line at close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open {path} for writing: {exc.strerror}") from None
        self.failed: str | None = None  # why recording stopped, once it did

    def append(
        self, request_id: str, status: str, error_type: str | None, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Record one request, the run's keys masked; → the rows as recorded (`rows` itself
        unless a key had to be masked). Raises StorageError if it cannot be written."""
        if self.failed:
            raise StorageError(self.failed)
        # a row's Logprobs is a dataclass, which orjson writes as an object of its fields
        entry = {"id": request_id, "status": status, "error_type": error_type, "rows": rows}
        text = orjson.dumps(entry)
        masked = mask_bytes(text)
        if masked is not text:  # a server echoed a key: the report gets the masked rows too
            rows = decode(masked)["rows"]
        data = memoryview(encode(masked))
        assert self._fd is not None
        try:
            while data:  # a short write (a file-size limit reached midway) leaves a torn line: resume cuts it
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.failed = _storage_message(self.path, exc)
            raise StorageError(self.failed) from None
        return rows

    def sync(self) -> None:
        if self._fd is not None and not self.failed:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failed = _storage_message(self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def _storage_message(path: Path, exc: OSError) -> str:
    full = exc.errno in FULL_ERRNOS
    why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or type(exc).__name__
    then = "once there is space again" if full else "once that is fixed"
    return (
        f"cannot write {path}: {why}; answers recorded so far are kept: "
        f"{then}, continue with: evalrun run --resume {path.parent}"
    )


def entry_problem(entry: Any) -> str | None:
    """Why a parsed journal line is not an entry (None if it is one)."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an entry object"
    rid, status, etype, rows = entry.get("id"), entry.get("status"), entry.get("error_type"), entry.get("rows")
    if not isinstance(rid, str) or not rid:
        return "no request id"
    if status not in STATUSES:
        return f"status {status!r:.40} is not ok or error"
    if etype is not None and not isinstance(etype, str):
        return "error_type is not a string"
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return "rows are not a list of objects"
    return None


def read_journal(path: Path, report: bool = True) -> Iterator[dict[str, Any]]:
    """Every complete, well-formed entry; a torn last line (crash mid-write) is skipped, and so
    is every line that is not an entry (logged with its number when `report`)."""
    if not path.exists():
        return
    bad: list[str] = []
    try:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    logger.info("journal %s: ignoring a torn last line %d (crash mid-write)", path, lineno)
                    return
                try:
                    entry = decode(line[:-1])
                except LineError as exc:
                    bad.append(f"line {lineno}: {exc}")
                    continue
                problem = entry_problem(entry)
                if problem:
                    bad.append(f"line {lineno}: {problem}")
                    continue
                yield entry
    finally:
        if bad and report:
            more = f" (and {len(bad) - REPORTED_LINES} more)" if len(bad) > REPORTED_LINES else ""
            logger.warning(
                "journal %s: skipped %d line(s) that are not entries: %s%s",
                path,
                len(bad),
                "; ".join(bad[:REPORTED_LINES]),
                more,
            )


def journal_state(path: Path) -> dict[str, tuple[str, str | None]]:
    """request_id → (status, error_type) of its latest entry, for resume."""
    # bad lines are reported once, when results.parquet is written from the journal
    return {e["id"]: (e["status"], e.get("error_type")) for e in read_journal(path, report=False)}


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
