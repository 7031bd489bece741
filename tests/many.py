"""Real servers for the many-process tests: a windowed rate-limit gateway on loopback, a
redis-server child with persistence off, and subprocess helpers. Each is started on a free
127.0.0.1 port and stopped by its own PID."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import LoopThread, completion, serve_loopback

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Gateway:
    """A provider enforcing `limit` requests per fixed `window_s` window (429 + Retry-After above it)."""

    base_url: str = ""
    limit: int = 10
    window_s: float = 1.0
    arrivals: list[tuple[float, int, str]] = field(default_factory=list)  # (time, status, first message)

    @property
    def statuses(self) -> list[int]:
        return [s for _, s, _ in self.arrivals]

    def max_per_window(self) -> int:
        """The most 200s in any one window, on the server's clock: what the budget allows is `limit`."""
        counts: dict[int, int] = {}
        for t, s, _ in self.arrivals:
            if s == 200:
                counts[math.floor(t / self.window_s)] = counts.get(math.floor(t / self.window_s), 0) + 1
        return max(counts.values(), default=0)


async def _start_gateway(gw: Gateway) -> web.AppRunner:
    used: dict[int, int] = {}
    body = orjson.dumps(completion("42"))

    async def handle(request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        now = time.time()  # wall clock: the same clock for every client process
        w = math.floor(now / gw.window_s)
        text = str(payload["messages"][-1]["content"])
        if used.get(w, 0) >= gw.limit:
            gw.arrivals.append((now, 429, text))
            left = (w + 1) * gw.window_s - now
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(left)))},
            )
        used[w] = used.get(w, 0) + 1
        gw.arrivals.append((now, 200, text))
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    gw.base_url, runner = await serve_loopback(handle)
    return runner


@pytest.fixture
def gateway(loop_thread: LoopThread) -> Iterator[Gateway]:
    gw = Gateway()
    runner = loop_thread.call(_start_gateway(gw))
    yield gw
    loop_thread.call(runner.cleanup())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop it by its PID (SIGKILL: the way a crashed or unplugged Redis goes)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def keys(self) -> list[str]:
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.port)
        return [k.decode() for k in r.keys("*")]


def start_redis() -> RedisServer:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):  # bounded: 10 s
        try:
            client.ping()
            return RedisServer(port, proc)
        except redis.ConnectionError:
            time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    pytest.fail("redis-server did not start")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def evalrun_proc(*args: Any, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m evalrun ARGS` as a child process of the test (stop it by its PID)."""
    return subprocess.Popen(
        [sys.executable, "-m", "evalrun", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def children(pid: int) -> list[int]:
    """The child PIDs of `pid` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(p) for p in task.read_text().split()]
    return out


def journal_lines(run_dir: Path) -> int:
    path = run_dir / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    """Poll `predicate` (bounded) — for a state to observe, never as a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@dataclass
class S3Server:
    """moto's standalone S3 server, a child process of the test."""

    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def objects(self, bucket: str) -> dict[str, bytes]:
        c = self.client()
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


AWS_SECRET = "testing-SECRET-value-9f3c"


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Server]:
    """moto_server on a free 127.0.0.1 port with a bucket `evals`; the AWS environment points at
    it (for the test's own process and every evalrun child), as a user's would point at AWS."""
    pytest.importorskip("moto")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "EVALRUN_CACHE": str(tmp_path / "cache"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    server = S3Server(port, proc, env)
    for _ in range(300):  # bounded: 15 s
        try:
            server.client().create_bucket(Bucket="evals")
            break
        except Exception:
            time.sleep(0.05)
    else:
        os.kill(proc.pid, signal.SIGKILL)
        pytest.fail("moto_server did not start")
    yield server
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
