"""Where a run's lanes start their pace: the limit learnt before, by this run or the last night's.

`rpm: auto` learns a server's unannounced limit from its 429s and the manifest records it per
lane. A resume starts from its own record. A new run of the same experiment starts from the
latest earlier run's record — the nightly case, where every night would otherwise pay the same
burst of 429s to learn the same limit — but only for lanes whose provider is the same server
(same base URLs, kind, key variable and, for the embedded simulator, the same settings). A
limit that was low is probed up again by the adaptive rate; one that was high costs one burst
of 429s, as learning from nothing would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalrun.errors import ConfigError
from evalrun.run.context import RunContext
from evalrun.run.store.manifest import Manifest
from evalrun.run.store.manifest_io import manifest_if_any

# what makes two provider records the same server (rpm, timeouts, concurrency do not)
SERVER_KEYS = ("kind", "preset", "base_urls", "api_key_env", "simulator")


def learned_at_start(ctx: RunContext) -> tuple[dict[str, Any], str]:
    """'provider/model' → {"rpm", "source"}: the lanes' starting limits (empty: learn from
    nothing), and where they come from, in words for the progress line."""
    if ctx.resumed or ctx.shard is not None:  # a shard learns its own share, as a resume does
        return ctx.manifest.learned_limits or {}, "the last run"
    return prior_limits(ctx.run_dir, ctx.manifest)


def prior_limits(run_dir: Path, manifest: Manifest) -> tuple[dict[str, Any], str]:
    """The learnt limits of the latest earlier whole run beside `run_dir` (same experiment, same
    server per provider), and that run, named."""
    best: Manifest | None = None
    started = manifest.started_at or ""
    for sibling in run_dir.parent.iterdir() if run_dir.parent.is_dir() else ():
        if sibling == run_dir or not sibling.is_dir():
            continue
        try:
            m = manifest_if_any(sibling)
        except ConfigError:  # a damaged run teaches nothing
            continue
        when = m.started_at or ""
        if (
            m.experiment != manifest.experiment
            or m.shard is not None  # a shard's record is its share of the limit
            or m.learned_limits is None
            or when >= started
        ):
            continue
        if best is None or when > (best.started_at or ""):
            best = m
    if best is None or best.learned_limits is None:
        return {}, ""
    then, now = best.providers or {}, manifest.providers or {}
    out: dict[str, Any] = {}
    for lane, rec in best.learned_limits.items():
        provider = str(lane).partition("/")[0]
        if _same_server(then.get(provider), now.get(provider)) and isinstance(rec, dict):
            out[lane] = rec
    return out, f"run {best.run_id or '?'}"


def _same_server(then: Any, now: Any) -> bool:
    if not isinstance(then, dict) or not isinstance(now, dict):
        return False
    return all(then.get(k) == now.get(k) for k in SERVER_KEYS)
