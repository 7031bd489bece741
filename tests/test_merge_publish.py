"""Paid answers under abuse of merge and object storage: `merge --out` onto a run, shard
manifests with bad fields, an object store that goes away before the run publishes (moto's
server, stopped by the test mid-run), `cache: true` with reports_dir on S3, a broken dataset
on S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Reply, base_config, read_results, write_config
from many import S3Server, s3_server
from test_storage import run_url, s3_config

__all__ = ["s3_server"]  # the fixture, imported for pytest


def one_line(res: Any) -> str:
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.startswith("evalrun: error:")]
    assert len(lines) == 1, res.err
    return lines[0]


def shards(tmp_path: Path, cli: Any) -> tuple[Path, list[Path]]:
    config = write_config(tmp_path, base_config(tmp_path, _rows(tmp_path, 12)))
    dirs = []
    for i in (1, 2):
        res = cli("run", config, "--shard", f"{i}/2", "--no-progress")
        assert res.code == 0, res.err
        dirs.append(res.run_dir)
    return config, dirs


def _rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"data{n}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i}+{i}"}) + b"\n" for i in range(n)))
    return path


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_merge_out_refuses_a_folder_that_holds_a_run(tmp_path: Path, cli: Any) -> None:
    config, dirs = shards(tmp_path, cli)
    done = cli("run", config, "--no-progress").run_dir
    stopped = cli("run", config, "--no-progress", "--max-requests", "2")
    assert stopped.code == 1
    (stopped.run_dir / "manifest.json").unlink()  # a journal alone is a run too
    for target in (done, stopped.run_dir):
        before = _files(target)
        res = cli("merge", *dirs, "--out", target)
        assert res.code == 2, res.err
        line = one_line(res)
        assert f"--out {target}" in line and "already holds a run" in line and "journal.jsonl" in line, line
        assert _files(target) == before  # its paid answers are where they were
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new"):
        res = cli("merge", *dirs, "--out", out)
        assert res.code == 0, res.err
        assert len(read_results(out)) == 12
    again = cli("merge", *dirs, "--out", empty)  # an earlier merge is a run as well
    assert again.code == 2 and "already holds a run" in again.err


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: m["shard"].update(index="x"), "shard.index is not a whole number"),
        (lambda m: m["shard"].pop("count"), "shard.count is missing"),
        (lambda m: m["shard"].update(index=0), "shard.index 0 is not from 1 to shard.count 2"),
        (lambda m: m["shard"].update(count=2.5), "shard.count is not a whole number"),
        (lambda m: m.update(shard=[1, 2]), "shard is a JSON list"),
        (lambda m: m["grid"].update(requests="many"), "grid.requests is not a whole number"),
        (lambda m: m.update(data_columns="id"), "data_columns is not a list"),
        (lambda m: m.update(status=3), "status is not a string"),
    ],
)
def test_merge_says_which_field_of_a_shard_manifest_is_bad(tmp_path: Path, cli: Any, edit: Any, says: str) -> None:
    _, dirs = shards(tmp_path, cli)
    path = dirs[1] / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    edit(manifest)
    path.write_bytes(orjson.dumps(manifest))
    res = cli("merge", *dirs, "--out", tmp_path / "merged")
    assert res.code == 2, res.err
    line = one_line(res)
    assert str(path) in line and says in line, line
    assert not (tmp_path / "merged").exists()


# ---------------------------------------------------------------------------- object storage


def stop(server: S3Server) -> None:
    """Kill moto's server now; the fixture reaps it at the end."""
    os.kill(server.proc.pid, signal.SIGKILL)
    for _ in range(200):  # bounded: until its port refuses
        try:
            server.client().list_buckets()
        except Exception:
            return
        time.sleep(0.05)
    raise AssertionError("moto_server still answers")


def start_moto(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """moto's server again on `port` (its state is gone with the old one: the bucket is made again)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(port, proc, env)
    for _ in range(300):  # bounded: 15 s
        try:
            server.client().create_bucket(Bucket="evals")
            return proc
        except Exception:
            time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    pytest.fail("moto_server did not start again")


def test_a_store_gone_before_publishing_keeps_the_answers_and_says_how_to_publish(
    tmp_path: Path, dataset: Path, cli: Any, scripted: Any, s3_server: S3Server
) -> None:
    stopped: list[int] = []

    def stop_the_store(payload: dict[str, Any]) -> Reply:
        if not stopped:  # the first request: the bucket goes away mid-run (the fixture reaps it)
            stop(s3_server)
            stopped.append(1)
        return Reply()

    srv = scripted(default=stop_the_store)
    cfg = base_config(tmp_path, dataset, srv.base_url, reports_dir="s3://evals/team")
    config = write_config(tmp_path, cfg)
    res = cli("run", config, "--no-progress")
    assert res.code == 1, res.err
    line = next(ln for ln in res.err.splitlines() if "could not publish" in ln)
    assert "Traceback" not in res.err
    local = Path(res.out.strip().splitlines()[-1])  # the run's place now: the local copy
    url = f"s3://evals/team/t/{local.name.rsplit('-', 1)[0]}"
    assert str(local) in line and f"evalrun run --resume {url}" in line, line
    assert len(read_results(local)) == 5 and len(srv.requests) == 5
    manifest = orjson.loads((local / "manifest.json").read_bytes())
    assert manifest["status"] == "unpublished" and manifest["location"] == url
    proc = start_moto(s3_server.port, s3_server.env)  # the store is back
    try:
        again = cli("run", "--resume", url, "--no-progress")
        assert again.code == 0, again.err
        assert run_url(again) == url and len(srv.requests) == 5  # published, nothing sent again
        prefix = url.removeprefix("s3://evals/")
        published = orjson.loads(s3_server.objects("evals")[f"{prefix}/manifest.json"])
        assert published["status"] == "completed" and "publish_error" not in published
        assert published["counts"]["recorded"] == 5
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_merge_out_refuses_a_url_that_holds_a_run(tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server) -> None:
    config = s3_config(tmp_path, dataset)
    urls = [run_url(cli("run", config, "--shard", f"{i}/2", "--no-progress")) for i in (1, 2)]
    done = run_url(cli("run", config, "--no-progress"))
    before = s3_server.objects("evals")
    res = cli("merge", *urls, "--out", done)
    assert res.code == 2, res.err
    assert f"--out {done}: it already holds a run" in one_line(res)
    assert s3_server.objects("evals") == before


def test_cache_true_with_reports_dir_on_s3_is_kept_in_the_users_cache_dir(
    tmp_path: Path, dataset: Path, cli: Any, scripted: Any, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    srv = scripted()
    config = write_config(
        tmp_path, base_config(tmp_path, dataset, srv.base_url, reports_dir="s3://evals/team", cache=True)
    )
    first = cli("run", config, "--no-progress")
    assert first.code == 0, first.err
    assert list(work.iterdir()) == []  # no folder named s3: (or anything) where the user stands
    files = list((Path(s3_server.env["EVALRUN_CACHE"]) / "responses").glob("team-*/responses.sqlite"))
    assert len(files) == 1
    plan = cli("plan", config, "--json")
    assert orjson.loads(plan.out)["cache"] == {"path": str(files[0]), "hits": 5, "saved": 0.0}
    second = cli("run", config, "--no-progress")
    assert second.code == 0 and len(srv.requests) == 5  # served from that cache
    bad = write_config(tmp_path, base_config(tmp_path, dataset, srv.base_url, cache="s3://evals/cache"), "bad.yaml")
    res = cli("validate", bad)
    assert res.code == 2 and "cache: s3://evals/cache: the cache is a local SQLite file" in one_line(res)
    assert list(work.iterdir()) == []


def test_errors_about_a_dataset_on_s3_name_its_url(
    tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server
) -> None:
    url = "s3://evals/data/broken.jsonl"
    s3_server.client().put_object(Bucket="evals", Key="data/broken.jsonl", Body=dataset.read_bytes() + b"{not json\n")
    config = write_config(tmp_path, base_config(tmp_path, url), "remote.yaml")  # type: ignore[arg-type]
    for args in (("validate", config), ("run", config, "--no-progress")):
        res = cli(*args)
        assert res.code == 2, res.err
        line = one_line(res)
        assert f"{url}:6: not valid JSON" in line and "datasets" not in line, line
    stop(s3_server)  # the store is gone: said in one line, naming it
    config = write_config(tmp_path, base_config(tmp_path, "s3://evals/data/other.jsonl"), "gone.yaml")  # type: ignore[arg-type]
    res = cli("validate", config)
    assert res.code == 2 and "dataset s3://evals/data/other.jsonl: cannot read it" in one_line(res)
    res = cli("summary", "s3://evals/team/t/some-run")
    assert res.code == 2 and "s3://evals/team/t/some-run: cannot be read" in one_line(res)


def test_workers_with_the_store_gone_keep_the_merged_run_and_publish_it_on_resume(
    tmp_path: Path, dataset: Path, scripted: Any, s3_server: S3Server
) -> None:
    from many import evalrun_proc, finish

    stopped: list[int] = []

    def stop_the_store(payload: dict[str, Any]) -> Reply:
        if not stopped:
            stop(s3_server)
            stopped.append(1)
        return Reply()

    srv = scripted(default=stop_the_store)
    config = write_config(tmp_path, base_config(tmp_path, dataset, srv.base_url, reports_dir="s3://evals/team"))
    code, out, err = finish(evalrun_proc("run", config, "--workers", "2", "--no-progress"))
    assert code == 1 and "Traceback" not in err, err
    line = next(ln for ln in err.splitlines() if "could not publish" in ln)
    url = line.split("could not publish the run to ", 1)[1].split(" ", 1)[0]
    assert url.startswith("s3://evals/team/t/") and f"evalrun run --resume {url}" in line
    assert len(srv.requests) == 5
    proc = start_moto(s3_server.port, s3_server.env)
    try:
        code, out, err = finish(evalrun_proc("run", "--resume", url, "--no-progress"))
        assert code == 0, err
        assert out.strip().splitlines()[-1] == url
        prefix = url.removeprefix("s3://evals/")
        published = orjson.loads(s3_server.objects("evals")[f"{prefix}/manifest.json"])
        assert published["status"] == "completed" and published["counts"]["recorded"] == 5
        assert len(srv.requests) == 5  # nothing sent again
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
