"""What `--stop-when-decided` plugs into a run: a decider that sees every answer as it is
recorded and names the cells whose verdict against a baseline is settled. Their requests not
yet sent are not sent (the lanes skip them); requests already on the wire end as rows, as
always. The decision itself is the analysis stage's (analysis.sequential builds the decider):
the run layer only asks and skips."""

from __future__ import annotations

from typing import Any, Protocol

from evalrun.run.grid.grid import Plan
from evalrun.run.records.records import RequestSpec
from evalrun.run.store.manifest import Manifest


class Decider(Protocol):
    decided: set[str]  # cell ids whose verdict is settled: their unsent requests are skipped

    def observe(self, spec: RequestSpec, rows: list[dict[str, Any]]) -> None:
        """One request's recorded rows (every choice), as the journal took them."""

    def report(self) -> dict[str, dict[str, Any]]:
        """cell id → {verdict, rows, answered}: for the manifest and the run's last words."""


def settled(decider: Decider | None, plan: Plan, manifest: Manifest, messages: list[str]) -> int:
    """At the run's end: the cells settled early go into the manifest and the run's last words;
    → how many requests they did not send (not missing: the run is whole without them)."""
    if decider is None:
        return 0
    report = decider.report()
    per_cell = plan.dataset.rows * plan.repeats
    skipped = sum(per_cell - int(c["answered"]) for c in report.values() if c.get("verdict"))
    manifest.decided = {"cells": report, "skipped": skipped}
    for cell_id, c in report.items():
        if c.get("verdict") and per_cell > int(c["answered"]):  # said where it saved something
            messages.append(
                f"cell {c.get('label', cell_id)}: {c['verdict']} against the baseline after {c['rows']:,} rows "
                f"(--stop-when-decided); {per_cell - int(c['answered']):,} of its {per_cell:,} requests not sent"
            )
    return skipped
