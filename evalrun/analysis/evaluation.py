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


def rescore_run(run_dir: Path, config: Path | None) -> tuple[list[dict[str, Any]], str]:
    """`evalrun score`: the scorers of `config` (default: the run's own) applied again to every
    row of a finished run, its summary rewritten; nothing is sent. → (summary, a title)."""
    import pyarrow.parquet as pq

    from evalrun.config.load import load_experiment
    from evalrun.run.store import MANIFEST, RESULTS, require_finished, rescore, write_json

    manifest = require_finished(run_dir)
    exp = load_experiment(config or Path(manifest["config_path"]), manifest.get("overrides") or [])
    names = pq.read_schema(run_dir / RESULTS).names
    columns = tuple(n[len(DATA_PREFIX) :] for n in names if n.startswith(DATA_PREFIX))
    scorers = load_scorers(exp.config.scorers, exp.path, columns, exp.lines)
    evaluation = Evaluation(scorers)
    rows = rescore(run_dir, evaluation)
    manifest["scorers"] = [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in exp.config.scorers]
    write_json(run_dir / MANIFEST, manifest)
    title = f"{run_dir.name}: rescored {rows:,} rows ({', '.join(scorers.names) or 'no scorers'})"
    return evaluation.write_summary(run_dir), title
