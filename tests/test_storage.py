"""Run directories and datasets on S3: moto's standalone server on 127.0.0.1, reached through
pyarrow's S3 client exactly as a user's bucket is (the AWS environment, AWS_ENDPOINT_URL)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, write_config
from many import AWS_SECRET, S3Server, s3_server

from evalrun.config.load import load_experiment
from evalrun.run.grid.grid import build_plan


def s3_config(tmp_path: Path, dataset: Path | str, **extra: Any) -> Path:
    cfg = base_config(tmp_path, dataset, reports_dir="s3://evals/team", **extra)  # type: ignore[arg-type]
    cfg["dataset"] = {"path": str(dataset)}
    return write_config(tmp_path, cfg)


def run_url(res: Any) -> str:
    return res.out.strip().splitlines()[-1]


def test_a_run_on_s3_is_published_and_read_back(
    tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = s3_config(tmp_path, dataset, scorers=[{"name": "exact", "type": "exact_match", "expected": "{answer}"}])
    first = cli("run", config, "--no-progress")
    assert first.code == 0, first.err
    url = run_url(first)
    assert url.startswith("s3://evals/team/t/")
    assert not (tmp_path / "s3:").exists()  # the old bug: a local folder named s3:
    objects = s3_server.objects("evals")
    prefix = url.removeprefix("s3://evals/")
    assert {f"{prefix}/{n}" for n in ("manifest.json", "results.parquet", "summary.parquet", "journal.jsonl")} <= set(
        objects
    )
    manifest = orjson.loads(objects[f"{prefix}/manifest.json"])
    assert manifest["status"] == "completed" and manifest["location"] == url
    # every reading command takes the URL
    res = cli("summary", url, "--format", "json")
    assert res.code == 0 and len(orjson.loads(res.out)) == 1, res.err
    assert cli("cost", url).code == 0
    rep = cli("report", url)
    assert rep.code == 0, rep.err
    html = Path(rep.out.strip().splitlines()[-1]).read_text()
    second = cli("run", config, "--no-progress")
    url2 = run_url(second)
    cmp = cli("compare", url, url2)
    assert cmp.code == 0, cmp.err
    latest = cli("compare", "--baseline", "latest", url2)
    assert latest.code == 0 and url.rsplit("/", 1)[-1] in latest.out + latest.err, latest.out + latest.err
    shutil.rmtree(tmp_path / "cache" / "read")  # another machine: no run of the bucket read here yet
    page = cli("report", url2, "--compare", "latest")  # the base found among the bucket's runs
    assert page.code == 0, page.err
    assert url.rsplit("/", 1)[-1] in Path(page.out.strip().splitlines()[-1]).read_text()
    # credentials never reach what evalrun writes
    for blob in [*s3_server.objects("evals").values(), html.encode()]:
        assert AWS_SECRET.encode() not in blob and b"testing-key-id" not in blob


def test_duckdb_reads_the_results_on_s3(tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server) -> None:
    duckdb = pytest.importorskip("duckdb")
    import pyarrow.fs as pafs
    from fsspec.implementations.arrow import ArrowFSWrapper

    url = run_url(cli("run", s3_config(tmp_path, dataset), "--no-progress"))
    # DuckDB's own httpfs extension is a download (not possible offline); the same S3 requests go
    # through pyarrow's S3 client registered as DuckDB's s3:// filesystem. README: the httpfs settings.
    fs = ArrowFSWrapper(pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{s3_server.port}", scheme="http"))
    assert fs.protocol == "s3"
    con = duckdb.connect()
    con.register_filesystem(fs)
    n, ok = con.sql(
        f"SELECT count(*), count(*) FILTER (status = 'ok') FROM read_parquet('{url}/results.parquet')"
    ).fetchall()[0]
    assert (n, ok) == (5, 5)


def test_a_dataset_on_s3_runs(tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server) -> None:
    s3_server.client().put_object(Bucket="evals", Key="data/questions.jsonl", Body=dataset.read_bytes())
    remote = write_config(tmp_path, base_config(tmp_path, "s3://evals/data/questions.jsonl"), "remote.yaml")  # type: ignore[arg-type]
    local = write_config(tmp_path, base_config(tmp_path, dataset), "local.yaml")
    assert cli("validate", remote).code == 0
    res = cli("run", remote, "--no-progress")
    assert res.code == 0, res.err
    import pandas as pd

    got = pd.read_parquet(Path(run_url(res)) / "results.parquet")
    want = {s.request_id for s in build_plan(load_experiment(local, [])).specs()}
    assert set(got.request_id) == want  # the same rows as the local file: the same request ids
    missing = write_config(tmp_path, base_config(tmp_path, "s3://evals/data/nope.jsonl"), "missing.yaml")  # type: ignore[arg-type]
    res = cli("run", missing, "--no-progress")
    assert res.code == 2 and "s3://evals/data/nope.jsonl: not found" in res.err


def test_a_stopped_run_on_s3_resumes_on_another_machine(
    tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server
) -> None:
    config = s3_config(tmp_path, dataset)
    first = cli("run", config, "--no-progress", "--max-requests", "2")
    assert first.code == 1
    url = run_url(first)
    import shutil

    shutil.rmtree(tmp_path / "cache")  # another machine: no staging directory, only the bucket
    res = cli("run", "--resume", url, "--no-progress")
    assert res.code == 0, res.err
    assert run_url(res) == url
    prefix = url.removeprefix("s3://evals/")
    manifest = orjson.loads(s3_server.objects("evals")[f"{prefix}/manifest.json"])
    assert manifest["status"] == "completed" and manifest["counts"]["recorded"] == 5
    assert manifest["counts"]["this_session"]["done"] == 3  # only the 3 without a row were sent


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("reports_dir", "gopher://host/x", "reports_dir"),
        ("reports_dir", "s3://", "names no bucket"),
        ("reports_dir", "https://host/x", "reports_dir"),
        ("dataset", "nosuch://b/d.jsonl", "dataset"),
    ],
)
def test_unsupported_locations_are_refused_at_validate(
    tmp_path: Path, dataset: Path, cli: Any, scripted: Any, key: str, value: str, says: str
) -> None:
    server = scripted()
    cfg = base_config(tmp_path, dataset, server.base_url)
    cfg[key] = {"path": value} if key == "dataset" else value
    config = write_config(tmp_path, cfg)
    for cmd in (["validate", config], ["run", config, "--no-progress"]):
        res = cli(*cmd)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and says in res.err, res.err
    assert server.requests == [] and not os.path.exists(tmp_path / "reports")


def test_a_bucket_that_cannot_be_written_stops_before_sending(
    tmp_path: Path, dataset: Path, cli: Any, scripted: Any, s3_server: S3Server
) -> None:
    server = scripted()
    cfg = base_config(tmp_path, dataset, server.base_url, reports_dir="s3://no-such-bucket/evals")
    res = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert res.code == 2 and "reports_dir: cannot write to s3://no-such-bucket/evals/t/" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and AWS_SECRET not in res.err
    assert server.requests == []


def test_shards_and_workers_on_s3_merge_there(tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server) -> None:
    config = s3_config(tmp_path, dataset)
    want = sorted(s.request_id for s in build_plan(load_experiment(config, [])).specs())
    urls = []
    for i in (1, 2):
        res = cli("run", config, "--shard", f"{i}/2", "--no-progress")
        assert res.code == 0, res.err
        urls.append(run_url(res))
    res = cli("merge", *urls, "--out", "s3://evals/team/t/merged")
    assert res.code == 0 and run_url(res) == "s3://evals/team/t/merged", res.err
    import io

    import pandas as pd

    objects = s3_server.objects("evals")
    assert sorted(pd.read_parquet(io.BytesIO(objects["team/t/merged/results.parquet"])).request_id) == want
    manifest = orjson.loads(objects["team/t/merged/manifest.json"])
    assert [s["shard"] for s in manifest["shards"]] == ["1/2", "2/2"]
    # --workers with reports_dir on S3: shards local, the merged run published
    from many import evalrun_proc, finish

    code, out, err = finish(evalrun_proc("run", config, "--workers", "2", "--no-progress"))
    assert code == 0, err
    url = out.strip().splitlines()[-1]
    assert url.startswith("s3://evals/team/t/")
    prefix = url.removeprefix("s3://evals/")
    objects = s3_server.objects("evals")
    assert sorted(pd.read_parquet(io.BytesIO(objects[f"{prefix}/results.parquet"])).request_id) == want
    assert orjson.loads(objects[f"{prefix}/manifest.json"])["workers"]["count"] == 2
