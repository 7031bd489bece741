"""The Redis-shared limiter against a real redis-server (persistence off, a free 127.0.0.1 port,
stopped by its PID) and a loopback gateway that enforces 600 rpm as 10 per 1-s window."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, read_results, write_config
from many import (
    Gateway,
    RedisServer,
    evalrun_proc,
    finish,
    free_port,
    gateway,
    redis_server,
    wait_for,
)

from evalrun.config.load import load_experiment
from evalrun.run.grid.grid import build_plan
from evalrun.run.rate.ratelimits import RateHeaders
from evalrun.run.rate.shared_limiter import SharedLimiter, _client, budget_key, key_fingerprint

KEY = "sk-test-SECRET-0123456789"


def grid_ids(config: Path) -> list[str]:
    return sorted(s.request_id for s in build_plan(load_experiment(config, [])).specs())


def shared_config(tmp_path: Path, gw: Gateway, redis_url: str, rows: int, **provider: Any) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i}+1", "answer": i + 1}) + b"\n" for i in range(rows))
    )
    cfg = base_config(tmp_path, path, gw.base_url)
    cfg["providers"]["sim"].update(
        rpm=600, limiter=redis_url, api_key_env="SHARED_TEST_KEY", max_concurrency=8, **provider
    )
    return write_config(tmp_path, cfg)


def test_keys_name_the_budget_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    k = budget_key("https://api.example.com/v1", KEY, "gpt-x")
    assert KEY not in k and "SECRET" not in k and "gpt-x" not in k
    assert k == budget_key("https://API.example.com:443/v2", KEY, "gpt-x")  # the host, not the path
    assert k != budget_key("https://api.example.com/v1", KEY + "2", "gpt-x")
    assert k != budget_key("https://api.example.com/v1", KEY, "gpt-y")
    assert k != budget_key("https://other.example.com/v1", KEY, "gpt-x")
    before = key_fingerprint(KEY)
    monkeypatch.setenv("EVALRUN_LIMITER_SECRET", "team-secret")
    assert key_fingerprint(KEY) != before and KEY not in key_fingerprint(KEY)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379/0", "redis://", "redis://host:notaport/0", "redis://host:6379/x", "redis://:pw@host:1/0"],
)
def test_bad_limiter_url_is_refused_at_validate(tmp_path: Path, cli: Any, scripted: Any, url: str) -> None:
    server = scripted()
    cfg = base_config(tmp_path, tmp_path / "d.jsonl", server.base_url)
    (tmp_path / "d.jsonl").write_text('{"id": "a", "question": "1+1", "answer": 2}\n')
    cfg["providers"]["sim"]["limiter"] = url
    config = write_config(tmp_path, cfg)
    for cmd in (["validate", config], ["run", config, "--no-progress"]):
        res = cli(*cmd)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res.err
        assert "providers.sim.limiter" in res.err and ("redis://HOST:PORT/DB" in res.err or "REDIS_PASSWORD" in res.err)
        assert "pw" not in res.err or "REDIS_PASSWORD" in res.err
    assert server.requests == []


def test_unreachable_redis_stops_before_sending(
    tmp_path: Path, cli: Any, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARED_TEST_KEY", KEY)
    config = shared_config(tmp_path, gateway, f"redis://127.0.0.1:{free_port()}/0", 3)
    res = cli("run", config, "--no-progress")
    assert res.code == 2 and "providers.sim.limiter: cannot reach redis://127.0.0.1:" in res.err
    assert gateway.arrivals == [] and not (tmp_path / "reports").exists()


def test_a_judges_unreachable_redis_stops_before_sending(tmp_path: Path, cli: Any, scripted: Any) -> None:
    """The judges' provider has its own limiter: checked up front like the models' providers'."""
    server = scripted()
    cfg = base_config(tmp_path, tmp_path / "d.jsonl", server.base_url)
    (tmp_path / "d.jsonl").write_text('{"id": "a", "question": "1+1", "answer": 2}\n')
    cfg["providers"]["judge"] = {"base_urls": [server.base_url], "limiter": f"redis://127.0.0.1:{free_port()}/0"}
    cfg["scorers"] = [
        {"type": "label_model", "model": "gemini-2.5-flash-lite", "provider": "judge", "rubric": "Is it right?"}
    ]
    res = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert res.code == 2 and "providers.judge.limiter: cannot reach redis://127.0.0.1:" in res.err, res.err
    assert server.requests == []


def test_three_shards_share_one_redis_budget(tmp_path: Path, gateway: Gateway, redis_server: RedisServer) -> None:
    config = shared_config(tmp_path, gateway, redis_server.url, 45)
    env = {"SHARED_TEST_KEY": KEY}
    procs = [evalrun_proc("run", config, "--shard", f"{i}/3", "--no-progress", env=env) for i in (1, 2, 3)]
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err
        assert KEY not in err
    assert gateway.statuses.count(429) == 0 and len(gateway.arrivals) == 45
    assert gateway.max_per_window() <= 10
    dirs = [Path(out.strip().splitlines()[-1]) for _, out, _ in results]
    code, _, err = finish(evalrun_proc("merge", *dirs, "--out", tmp_path / "merged"))
    assert code == 0, err
    assert sorted(read_results(tmp_path / "merged").request_id) == grid_ids(config)
    keys = redis_server.keys()
    assert keys and all(k.startswith("evalrun:rl:") and KEY not in k for k in keys)
    import redis

    r = redis.Redis(port=redis_server.port)
    dump = b"".join(str(r.hgetall(k) if r.type(k) == b"hash" else r.zrange(k, 0, -1)).encode() for k in keys)
    assert KEY.encode() not in dump and b"SECRET" not in dump
    assert r.zcard(next(k for k in keys if k.endswith(":peers"))) == 3  # the three processes shared it


def test_workers_share_one_redis_budget(tmp_path: Path, gateway: Gateway, redis_server: RedisServer) -> None:
    config = shared_config(tmp_path, gateway, redis_server.url, 45)
    code, out, err = finish(
        evalrun_proc("run", config, "--workers", "3", "--no-progress", env={"SHARED_TEST_KEY": KEY})
    )
    assert code == 0, err
    assert "paces at 1/3" not in err  # the budget is shared whole, not split
    assert gateway.statuses.count(429) == 0 and len(gateway.arrivals) == 45 and gateway.max_per_window() <= 10
    assert sorted(read_results(Path(out.strip().splitlines()[-1])).request_id) == grid_ids(config)


def test_redis_lost_mid_run_falls_back_to_a_local_share(
    tmp_path: Path, gateway: Gateway, redis_server: RedisServer
) -> None:
    config = shared_config(tmp_path, gateway, redis_server.url, 75)
    env = {"SHARED_TEST_KEY": KEY}
    procs = [evalrun_proc("run", config, "--shard", f"{i}/3", "--no-progress", env=env) for i in (1, 2, 3)]
    wait_for(lambda: len(gateway.arrivals) >= 20)
    redis_server.stop()
    cut = len(gateway.arrivals)
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err
        assert "unreachable" in err and "paces alone at 1/3 of the budget" in err, err
    assert gateway.statuses[:cut].count(429) == 0  # while Redis held the budget: not one 429
    ok = sorted({t for _, s, t in gateway.arrivals if s == 200})
    assert len(ok) == 75  # every request answered once
    # never past the budget: after the fallback, three processes at 200 rpm each; in any span of
    # W seconds at most 10·W sends plus one per process at the span's edge
    times = sorted(t for t, _, _ in gateway.arrivals)
    for w in (1.0, 2.0, 4.0):
        worst = max(sum(1 for u in times[i:] if u < t + w) for i, t in enumerate(times))
        assert worst <= 10 * w + 3, (w, worst)


def test_blocks_decreases_and_token_corrections_reach_every_process(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client_a, client_b = _client(redis_server.url), _client(redis_server.url)
        key = budget_key("http://127.0.0.1:1/v1", KEY, "m")
        a = SharedLimiter("m", 600, 60_000, client_a, key, redis_server.url)
        b = SharedLimiter("m", 600, 60_000, client_b, key, redis_server.url)
        assert await a.acquire(100) < 0.05
        tok0 = float(await client_a.hget(key, "tok"))
        a.settle(100, 1100)  # used 1,000 tokens more than booked: the token slot moves for everyone
        await a.aclose()
        assert float(await client_a.hget(key, "tok")) == pytest.approx(tok0 + 1000 * 1.002 / 1000)
        # a full window heard by A (remaining 0, reset in 2.5 s) blocks B as well (the token slot
        # is only ~1.1 s ahead)
        a.on_success(0.01, None, a.sent())  # one accepted in the last second, by A's ledger
        a.on_rate_limited(None, RateHeaders(remaining_requests=0, reset_requests_s=2.5), a.sent())
        await a.aclose()
        assert float(await client_b.hget(key, "blocked")) > 0
        # A's decrease (to 0.9 × the 1/s it saw accepted) is B's pace too, and B's decrease in
        # the same episode is refused
        adaptive = float(await client_a.hget(key, "adaptive"))
        assert adaptive == pytest.approx(0.9, rel=0.01)
        b.aimd.rate = b.aimd.ceiling = 5.0
        b._adapted(decreased=True)
        await b.aclose()
        assert float(await client_b.hget(key, "adaptive")) == adaptive
        waited = await b.acquire(1)  # blocked until A's window resets
        assert waited >= 2.0 and b.fallen_back is None and b.adaptive == adaptive
        for c in (client_a, client_b):
            await c.aclose()

    asyncio.run(scenario())


def test_a_shard_killed_and_resumed_keeps_to_the_shared_budget(
    tmp_path: Path, gateway: Gateway, redis_server: RedisServer
) -> None:
    import os
    import signal

    from many import journal_lines

    config = shared_config(tmp_path, gateway, redis_server.url, 45)
    env = {"SHARED_TEST_KEY": KEY}
    dirs = [tmp_path / f"s{i}" for i in (1, 2, 3)]
    procs = [
        evalrun_proc("run", config, "--shard", f"{i}/3", "--run-dir", d, "--no-progress", env=env)
        for i, d in zip((1, 2, 3), dirs)
    ]
    wait_for(lambda: journal_lines(dirs[1]) >= 3)
    os.kill(procs[1].pid, signal.SIGKILL)
    assert procs[1].wait(30) == -signal.SIGKILL
    assert [finish(p)[0] for p in (procs[0], procs[2])] == [0, 0]
    assert journal_lines(dirs[1]) < 15  # killed before it finished its shard
    code, _, err = finish(evalrun_proc("run", "--resume", dirs[1], "--no-progress", env=env))
    assert code == 0, err
    code, _, err = finish(evalrun_proc("merge", *dirs, "--out", tmp_path / "merged"))
    assert code == 0, err
    assert sorted(read_results(tmp_path / "merged").request_id) == grid_ids(config)
    texts = [t for _, s, t in gateway.arrivals if s == 200]
    assert len(texts) - len(set(texts)) <= 1  # resumed, not re-run: at most the one on the wire twice
    assert gateway.statuses.count(429) == 0 and gateway.max_per_window() <= 10


def test_a_clean_episode_raises_the_shared_rate_for_everyone(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = _client(redis_server.url)
        key = budget_key("http://127.0.0.1:1/v1", KEY, "m2")
        a = SharedLimiter("m2", 600, None, client, key, redis_server.url)
        b = SharedLimiter("m2", 600, None, client, key, redis_server.url)
        a.aimd.rate, a.aimd.ceiling = 9.0, 10.0  # as a decrease from 10/s leaves it
        a.aimd.next_increase = a.clock.now() + 1.0
        a._adapted(decreased=True)
        await a.aclose()
        low = float(await client.hget(key, "adaptive"))
        await asyncio.sleep(1.05)  # the episode (MIN_EPISODE_S) ends on Redis's clock
        b.on_success(0.01)  # B has not heard of the decrease yet: it learns it from its next booking
        await b.acquire(1)
        b.on_success(0.01)  # a success after the episode: back toward the ceiling, for everyone
        await b.aclose()
        high = float(await client.hget(key, "adaptive"))
        ceiling = float(await client.hget(key, "ceiling"))
        assert high == pytest.approx(min(ceiling, low * 2.0)) and high > low
        await a.acquire(1)
        assert a.adaptive == pytest.approx(high)
        await client.aclose()

    asyncio.run(scenario())


def test_the_experiments_limiter_is_every_providers_default(tmp_path: Path, cli: Any) -> None:
    (tmp_path / "d.jsonl").write_text('{"id": "a", "question": "1+1", "answer": 2}\n')
    cfg = base_config(tmp_path, tmp_path / "d.jsonl", "http://127.0.0.1:9/v1", limiter="redis://127.0.0.1:7000/1")
    cfg["providers"]["own"] = {"base_urls": ["http://127.0.0.1:9/v1"], "limiter": "redis://127.0.0.1:7001/0"}
    exp = load_experiment(write_config(tmp_path, cfg), [])
    assert exp.providers["sim"].limiter == "redis://127.0.0.1:7000/1"
    assert exp.providers["own"].limiter == "redis://127.0.0.1:7001/0"  # its own wins
    bad = write_config(tmp_path, {**cfg, "limiter": "memcached://127.0.0.1:1"}, "bad.yaml")
    res = cli("validate", bad)
    assert res.code == 2 and "bad.yaml:" in res.err and "limiter" in res.err and "redis://HOST:PORT/DB" in res.err
