"""The analysis stage as the run stage sees it: a `RowHook` that scores every batch of report
rows and adds it to the summary while results.parquet is written — one pass, no re-read —
and the judge requests the run stage should send before that.

`cli` hands `for_experiment` to the runner, so the run stage never imports analysis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.analysis.judges import Judges, compile_judges
from evalrun.analysis.scoring import JUDGES, Scorers, load_scorers
from evalrun.analysis.summary import SummaryBuilder, write_summary
from evalrun.run.records import RequestSpec
from evalrun.run.store import DATA_PREFIX, JOURNAL, read_journal

if TYPE_CHECKING:
    from evalrun.config.load import Experiment


def _latest_rows(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The report rows of each request's latest journal entry (a resume may have added one)."""
    latest: dict[str, int] = {}
    for i, entry in enumerate(read_journal(run_dir / JOURNAL, report=False)):  # bad lines: said below
        latest[entry["id"]] = i
    for i, entry in enumerate(read_journal(run_dir / JOURNAL)):
        if latest.get(entry["id"]) == i:
            yield from entry["rows"]


class Evaluation:
    """Scorers, judges and the summary builder, fed batch by batch."""

    def __init__(self, scorers: Scorers, judges: Judges | None = None) -> None:
        self.scorers = scorers
        self.judges = judges or Judges([])
        self.summary = SummaryBuilder()

    @property
    def score_names(self) -> Sequence[str]:
        return [*self.scorers.names, *(j.name for j in self.judges.judges)]

    @property
    def extra_columns(self) -> Sequence[tuple[str, str]]:
        return self.judges.columns()

    @property
    def reads_logprobs(self) -> bool:
        return self.scorers.reads_logprobs or bool(self.judges)

    @property
    def judge_providers(self) -> set[str]:
        return self.judges.providers

    def _load(self, run_dir: Path) -> None:
        # every time: answers arrive in the judge journal while the judge lanes run, and a
        # lane stopped early (budget, Ctrl-C) never finishes the generator that asked
        if self.judges:
            self.judges.load(run_dir, _latest_rows(run_dir))

    def judge_lanes(self) -> set[tuple[str, str]]:
        return {(j.cell.provider, j.cell.model) for j in self.judges.judges}

    def judge_requests(self, run_dir: Path, lane: tuple[str, str] | None = None) -> Iterator[RequestSpec]:
        """The judge requests of this run that have no answer yet (of one provider × model), lazily."""
        if self.judges:
            self._load(run_dir)
            yield from self.judges.requests(_latest_rows(run_dir), lane)

    def on_batch(self, rows: list[dict[str, Any]]) -> None:
        self.scorers.apply(rows, DATA_PREFIX)
        self.judges.apply(rows)
        self.summary.add(rows)

    def prepare(self, run_dir: Path) -> None:
        """Before results.parquet is written: read what the judges answered."""
        self._load(run_dir)

    def write_summary(self, run_dir: Path) -> list[dict[str, Any]]:
        return write_summary(run_dir, self.summary.rows())


def for_experiment(exp: Experiment, data_columns: tuple[str, ...]) -> Evaluation:
    """The experiment's scorers and judges, compiled (a bad one raises ConfigError before
    anything is sent)."""
    configs = exp.config.scorers
    scorers = load_scorers(configs, exp.path, data_columns, exp.lines)
    where = f"{exp.path}: scorers"
    judges = compile_judges(configs, exp.judge_provider, [m.name for m in exp.config.models], where)
    return Evaluation(scorers, judges)


def has_judges(run_dir: Path, config: Path | None) -> bool:
    """Whether the scorers of `config` (default: the run's own) include model judges."""
    from evalrun.config.load import load_experiment
    from evalrun.run.store import require_finished

    manifest = require_finished(run_dir)
    exp = load_experiment(config or Path(str(manifest.config_path)), manifest.overrides)
    return any(isinstance(s, JUDGES) for s in exp.config.scorers)


def rescore_run(run_dir: Path, config: Path | None) -> tuple[list[dict[str, Any]], str]:
    """`evalrun score`: the scorers of `config` (default: the run's own) applied again to every
    row of a finished run, its summary rewritten; nothing is sent. → (summary, a title)."""
    import pyarrow.parquet as pq

    from evalrun.config.load import load_experiment
    from evalrun.run.store import RESULTS, record_scorers, require_finished, rescore

    manifest = require_finished(run_dir)
    exp = load_experiment(config or Path(str(manifest.config_path)), manifest.overrides)
    names = pq.read_schema(run_dir / RESULTS).names
    columns = tuple(n[len(DATA_PREFIX) :] for n in names if n.startswith(DATA_PREFIX))
    scorers = load_scorers(exp.config.scorers, exp.path, columns, exp.lines)
    evaluation = Evaluation(scorers)
    rows = rescore(run_dir, evaluation)
    scorers_used = [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in exp.config.scorers]
    record_scorers(run_dir, manifest, scorers_used)
    title = f"{run_dir.name}: rescored {rows:,} rows ({', '.join(scorers.names) or 'no scorers'})"
    return evaluation.write_summary(run_dir), title


def stopped_note(run_dir: Path) -> str | None:
    """What `score` says of a run that did not finish: it scored the rows there are, and how
    to finish the run (score itself never sends the experiment's requests)."""
    from evalrun.run.store import Counts, manifest_if_any

    counts = manifest_if_any(run_dir).counts or Counts()
    missing, total = counts.missing, counts.requests
    if not missing:
        return None
    return (
        f"scored the {total - missing:,} of {total:,} requests that have a row: the run was stopped; "
        f"finish it with: evalrun run --resume {run_dir} (score sends no experiment request)"
    )
