"""results.parquet written while the run goes (run/store/sink.py), over real HTTP to the embedded
simulator: several row groups, every request exactly one row, the summary hook fed each row
exactly once; a resumed run still rebuilds from the journal."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import base_config, read_results, write_config

import evalrun.run.store.sink as sink


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink, "SEND_ROWS", 1)  # each request to the writer on its own
    monkeypatch.setattr(sink, "PARQUET_BATCH_ROWS", 2)  # 5 requests → row groups of 2, 2 and 1
    monkeypatch.setattr(sink, "FLUSH_S", 3600.0)


def _summary_counts(run_dir) -> tuple[int, int]:
    t = pq.read_table(run_dir / "summary.parquet", columns=["requests", "rows"]).to_pydict()
    return sum(t["requests"]), sum(t["rows"])


def test_rows_are_written_in_row_groups_as_they_finish_and_the_summary_sees_each_once(
    tmp_path, dataset, cli, small_batches
) -> None:
    config = write_config(tmp_path, base_config(tmp_path, dataset))
    r = cli("run", config, "--no-progress")
    assert r.code == 0, r.err
    meta = pq.ParquetFile(r.run_dir / "results.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    df = read_results(r.run_dir)
    assert len(df) == 5 and df.request_id.is_unique and set(df.status) == {"ok"}
    assert _summary_counts(r.run_dir) == (5, 5)
    assert not (r.run_dir / "results.parquet.tmp").exists()
    manifest = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert manifest["counts"]["recorded"] == manifest["counts"]["rows"] == 5


def test_a_resumed_run_rebuilds_from_the_journal_with_each_request_once(tmp_path, dataset, cli, small_batches) -> None:
    config = write_config(tmp_path, base_config(tmp_path, dataset))
    first = cli("run", config, "--no-progress", "--max-requests", "3")
    assert first.code == 1
    assert len(read_results(first.run_dir)) == 3
    again = cli("run", "--resume", first.run_dir, "--no-progress", "--retry-errors")
    assert again.code == 0, again.err
    df = read_results(first.run_dir)
    assert len(df) == 5 and df.request_id.is_unique
    assert _summary_counts(first.run_dir) == (5, 5)
