"""Shards: one grid split into N disjoint parts by request id, so N processes (or machines) can
run it without talking to each other.

A request belongs to shard I of N when its id — already a blake2b hash of cell, row and repeat —
read as a number is I-1 modulo N. Every shard sees the same grid (same fingerprint); the shards
together hold every request exactly once, whatever order or machine they run on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from evalrun.errors import ConfigError
from evalrun.run.records.records import RequestSpec
from evalrun.run.store.manifest import Manifest

MAX_SHARDS = 10_000
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """For a directory name: 2of3."""
        return f"{self.index}of{self.count}"

    def holds(self, request_id: str) -> bool:
        return int(request_id, 16) % self.count == self.index - 1

    def filter(self, specs: Iterable[RequestSpec]) -> Iterator[RequestSpec]:
        return (s for s in specs if self.holds(s.request_id))


def parse_shard(text: str) -> Shard:
    """'2/3' → Shard(2, 3). A ConfigError (exit 2) names what is allowed."""
    m = _SPEC.match(text)
    if m is None:
        raise ConfigError(f"--shard {text!r}: expected I/N, like --shard 1/3 (I from 1 to N)")
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(f"--shard {text}: N must be from 1 to {MAX_SHARDS:,}")
    if not 1 <= index <= count:
        raise ConfigError(
            f"--shard {text}: I must be from 1 to {count} (shards are numbered 1/{count} … {count}/{count})"
        )
    return Shard(index, count)


def shard_from_manifest(manifest: Manifest) -> Shard | None:
    raw = manifest.shard
    return None if raw is None else Shard(raw.index, raw.count)
