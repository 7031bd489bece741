"""Live progress on stderr: a rich bar on a terminal, periodic plain lines otherwise (CI).

The line always keeps done/total and the ETA; when a lane's pace is held back it says by
what, in the limiter's words: a configured rpm/tpm, the server's announced limits, a full
server window (and when it frees), or an adaptive slow-down after 429s.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evalrun.run.rate.limiter import Limiters

if TYPE_CHECKING:
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

LOG_EVERY_S = 10.0


@dataclass
class RunStats:
    """Counters updated as each result is recorded."""

    total: int
    currency: str | None = None  # set when prices are known: the display shows cost so far
    cost: float = 0.0
    done: int = 0
    ok: int = 0
    errors: int = 0
    retries: int = 0
    tokens: int = 0
    cached: int = 0  # answers served from a cache (unsent)
    saved: float = 0.0  # what those answers cost when they were first asked
    errors_by_type: Counter[str] = field(default_factory=Counter)
    retries_by_type: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def line(self, limiters: Limiters | None = None, in_flight: int = 0) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        parts = [
            f"{self.done:,}/{self.total:,}",
            f"{rate:,.1f} req/s",
            f"{self.tokens / elapsed:,.0f} tok/s",
            *([f"{self.cost:,.4f} {self.currency}"] if self.currency else []),
            f"errors {self.errors}" + (f" ({_top(self.errors_by_type)})" if self.errors else ""),
            f"retries {self.retries}" + (f" ({_top(self.retries_by_type)})" if self.retries else ""),
            f"in flight {in_flight}",
        ]
        if limiters is not None:
            lanes = limiters.describe()
            if lanes:
                shown = "; ".join(lanes[:3]) + (f"; +{len(lanes) - 3} more" if len(lanes) > 3 else "")
                parts.append(shown)
        parts.append(f"ETA {_duration(eta)}")
        return " · ".join(parts)


def _top(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.most_common(3))


def _duration(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Draws RunStats: a rich progress bar when stderr is a terminal, else a log line every 10 s."""

    def __init__(self, stats: RunStats, limiters: Limiters | None, label: str, enabled: bool = True) -> None:
        self.stats = stats
        self.limiters = limiters
        self.label = label
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self._bar: Bar | None = None
        self._task: TaskID | None = None
        self._last_log = time.monotonic()

    def start(self) -> None:
        if not self.tty:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.stats.total, detail="")

    def update(self, in_flight: int = 0, force: bool = False) -> None:
        if not self.enabled:
            return
        if self._bar is not None and self._task is not None:
            detail = self.stats.line(self.limiters, in_flight).split(" · ", 1)[1]
            self._bar.update(self._task, completed=self.stats.done, detail=detail)
            return
        now = time.monotonic()
        if force or now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            print(f"[{self.label}] {self.stats.line(self.limiters, in_flight)}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.stop()
            self._bar = None
        elif self.enabled:
            self.update(force=True)
