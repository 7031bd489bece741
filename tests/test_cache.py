"""The response cache store: keyed by what was asked and where, shared safely by processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from evalrun.run.store.cache import CachedAnswer, ResponseCache, cached_rows, request_key


def test_the_key_is_the_body_the_endpoint_and_the_repeat_never_anything_else() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    k = request_key(body, "https://a/v1", 0)
    assert k == request_key(body, "https://a/v1", 0)
    assert k != request_key(body, "https://a/v1", 1)  # repeats are separate samples
    assert k != request_key(body, "https://b/v1", 0)  # another endpoint answers differently
    assert k != request_key(body.replace(b"hi", b"ho"), "https://a/v1", 0)


def test_a_hit_keeps_the_answer_and_its_original_cost_and_costs_this_run_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    rows = [
        {"run_id": "old", "request_id": "r", "status": "ok", "content": "42", "prompt_tokens": 10, "cost_total": 0.5},
        {"run_id": "old", "request_id": "r", "status": "ok", "content": "41", "cost_total": None},
    ]
    cache.put("k", rows, "old", 0.5)
    cache.put("k", [{"status": "ok", "content": "other"}], "newer", 9.0)  # the first answer stored stays
    hit = cache.get("k")
    assert hit == CachedAnswer(
        [
            {"status": "ok", "content": "42", "prompt_tokens": 10, "cost_total": 0.5},
            {"status": "ok", "content": "41", "cost_total": None},
        ],
        "old",
        0.5,
    )
    out = list(cached_rows(hit, {"run_id": "new", "request_id": "r2"}))
    assert out[0]["run_id"] == "new" and out[0]["request_id"] == "r2" and out[0]["content"] == "42"
    assert out[0]["prompt_tokens"] == 10 and out[0]["cost_total"] == 0.0 and out[0]["cached_cost_total"] == 0.5
    assert all(r["cached"] for r in out) and out[1]["cost_total"] is None
    assert cache.get("missing") is None and len(cache) == 1


def _writer(path: str, start: int) -> None:
    cache = ResponseCache(Path(path))
    for i in range(start, start + 200):
        cache.put(f"k{i}", [{"status": "ok", "content": str(i)}], f"run{start}", 0.001)
    cache.close()


def test_several_processes_write_one_cache_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ResponseCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), s)) for s in (0, 100, 200, 300)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ResponseCache(path, readonly=True)
    assert len(cache) == 500  # overlapping ranges: each key once
    assert all(cache.get(f"k{i}") is not None for i in range(500))
