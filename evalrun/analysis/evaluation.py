"""The analysis stage as the run stage sees it: a `RowHook` that scores every batch of report
rows and adds it to the summary while results.parquet is written — one pass, no re-read.

`cli` hands `for_experiment` to the runner, so the run stage never imports analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.analysis.scoring import Scorers, load_scorers
from evalrun.analysis.summary import SummaryBuilder, write_summary
from evalrun.run.store import DATA_PREFIX

if TYPE_CHECKING:
    from evalrun.config.load import Experiment


class Evaluation:
    """Scorers and the summary builder, fed batch by batch."""

    def __init__(self, scorers: Scorers) -> None:
        self.scorers = scorers
        self.summary = SummaryBuilder()

    @property
    def score_names(self) -> Sequence[str]:
        return self.scorers.names

    def on_batch(self, rows: list[dict[str, Any]]) -> None:
        self.scorers.apply(rows, DATA_PREFIX)
        self.summary.add(rows)

    def write_summary(self, run_dir: Path) -> list[dict[str, Any]]:
        return write_summary(run_dir, self.summary.rows())


def for_experiment(exp: Experiment, data_columns: tuple[str, ...]) -> Evaluation:
    """The experiment's scorers, compiled (a bad scorer raises ConfigError before anything is sent)."""
    return Evaluation(load_scorers(exp.config.scorers, exp.path, data_columns, exp.lines))
