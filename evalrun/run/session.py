"""A run's sending side, built once and shared by every lane: the endpoints (simulators started
here), one provider client each over the run's single HTTP session, the limiters, the
concurrency slots and the retry loop; and the one lane builder, for the cells and the judges.

aiohttp and the sending packages are imported inside the functions: `evalrun --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalrun.config.models import ProviderConfig
from evalrun.run.context import RunContext
from evalrun.run.records.records import Cell, RequestSpec
from evalrun.run.send.budget import CostBudget
from evalrun.run.send.stops import Stops

if TYPE_CHECKING:
    import aiohttp

    from evalrun.run.http.client import ProviderClient
    from evalrun.run.rate.shared_limiter import SharedLimiters
    from evalrun.run.send.attempts import Attempts, Lane
    from evalrun.run.send.slots import Slots
    from evalrun.sim.app import SimulatorHandle


@dataclass(frozen=True, slots=True)
class Session:
    """What the lanes of a run share: each provider's client and slots, the limiters, the retry loop."""

    providers: dict[str, ProviderConfig]
    clients: dict[str, ProviderClient]
    limiters: SharedLimiters
    slots: dict[str, Slots]
    attempts: Attempts

    def lanes(self, streams: Iterable[tuple[tuple[str, str], Iterator[RequestSpec]]]) -> list[Lane]:
        """One lane per (provider, model) → its requests; each stream is taken as its lane is built."""
        from evalrun.run.send.attempts import Lane

        return [
            Lane(
                prov,
                model,
                specs,
                self.clients[prov],
                self.limiters.get(prov, model),
                self.slots[prov],
                self.providers[prov].max_concurrency,
            )
            for (prov, model), specs in streams
        ]


async def start_endpoints(providers: dict[str, ProviderConfig], sims: list[SimulatorHandle]) -> dict[str, list[str]]:
    """provider → its base URLs; a simulator provider's is started here and added to `sims`
    (the caller closes them, however the run ends)."""
    base_urls: dict[str, list[str]] = {}
    for name, p in providers.items():
        if p.kind == "simulator":
            from evalrun.sim import SimOptions, start_simulator

            sim = await start_simulator(SimOptions.from_mapping(p.simulator))
            sims.append(sim)
            base_urls[name] = [sim.base_url]
        else:
            base_urls[name] = p.base_urls
    return base_urls


def connector_limit(providers: dict[str, ProviderConfig]) -> int:
    """The HTTP session's connection cap: every provider's concurrency, summed."""
    return sum(p.max_concurrency for p in providers.values())


def build_session(
    ctx: RunContext,
    providers: dict[str, ProviderConfig],
    http: aiohttp.ClientSession,
    base_urls: dict[str, list[str]],
    stops: Stops,
    budget: CostBudget | None,
) -> Session:
    """The clients over `http`, the limiters, the slots and the retry loop, for the providers
    this run talks to."""
    from evalrun.run.http.client import ProviderClient
    from evalrun.run.rate.shared_limiter import make_limiters
    from evalrun.run.send.attempts import Admission, Attempts
    from evalrun.run.send.slots import Slots

    clients = {
        n: ProviderClient(
            n, http, base_urls[n], ctx.keys.get(n), p.headers, p.timeout_s, p.connect_timeout_s, p.fallback_after
        )
        for n, p in providers.items()
    }
    retry = ctx.exp.config.retry
    shards = ctx.shard.count if ctx.shard else 1
    limiters = make_limiters(providers, base_urls, ctx.keys, ctx.rate_share, shards, retry.retry_after_max_s)
    slots = {n: Slots(p.max_concurrency) for n, p in providers.items()}
    key_env = {n: p.api_key_env for n, p in providers.items()}
    attempts = Attempts(retry, stops, Admission(ctx.max_requests, budget), key_env)
    return Session(providers, clients, limiters, slots, attempts)


def lane_specs(ctx: RunContext) -> dict[tuple[str, str], Iterator[RequestSpec]]:
    """(provider, model) → the lazy stream of that lane's requests still to send (none when
    only the judges are asked)."""
    if ctx.judges_only:
        return {}
    cells: dict[tuple[str, str], list[Cell]] = {}
    for c in ctx.plan.cells:
        cells.setdefault((c.provider, c.model), []).append(c)
    done, rows_first = ctx.done, ctx.decider is not None
    out: dict[tuple[str, str], Iterator[RequestSpec]] = {}
    for key, group in cells.items():
        specs = ctx.plan.specs(group, rows_first)
        specs = specs if ctx.shard is None else ctx.shard.filter(specs)
        out[key] = (s for s in specs if s.request_id not in done) if done else specs
        if ctx.decider is not None:  # a settled cell's requests not yet pulled are never sent
            decided = ctx.decider.decided
            out[key] = (s for s in out[key] if s.cell.cell_id not in decided)
    return out
