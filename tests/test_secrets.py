"""Secrets: a server that echoes the request's key back everywhere it can, and keys that are
wrong in the environment. After each run every file written (journal, results, summary,
manifest, report) and everything printed is searched for the key, and for the first 12
characters of it (what survived when error text was cut before it was masked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import base_config, completion, serve_loopback, write_config

from evalrun.cli import main
from evalrun.run.store.framing import decode

KEY = "sk-echo-" + "Zq7" * 10  # 38 characters, as a real key is long
ENV = "EVALRUN_TEST_ECHO_KEY"


def _echo_body(question: str, key: str) -> tuple[int, dict[str, Any]]:
    """Where this request's answer puts the key, by dataset row (q1 … q5)."""
    body = completion()
    if "1 + 2" in question:
        body["choices"][0]["message"]["content"] = f"42 (you sent {key})"
    elif "2 + 4" in question:
        call = {
            "id": key,
            "type": "function",
            "function": {"name": "f", "arguments": orjson.dumps({"k": key}).decode()},
        }
        body["choices"][0]["message"]["tool_calls"] = [call]
    elif "3 + 6" in question:
        body["id"], body["model"] = key, f"m/{key}"
    elif "4 + 8" in question:  # the key straddles the 2,000-character cut of error text
        return 400, {"error": {"message": "x" * 1988 + key + " end", "type": "invalid_request_error"}}
    else:
        body["choices"][0]["logprobs"] = {"content": [{"token": key, "logprob": -0.1, "bytes": [], "top_logprobs": []}]}
    return 200, body


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _broken_body(question: str, key: str) -> bytes:
    """Malformed answers quoting the key just across the cut of the message that quotes them."""
    body = completion()
    if "1 + 2" in question:
        return b"<" * 190 + key.encode()  # not JSON: the error quotes the first 200 characters
    if "2 + 4" in question:
        body["choices"][0]["finish_reason"] = {"why": "w" * 40 + key}  # a note quotes 60 characters
    elif "3 + 6" in question:
        body["usage"]["prompt_tokens"] = "z" * 45 + key
    elif "4 + 8" in question:
        body["choices"][0]["logprobs"] = {"content": [{"token": 5, "pad": "v" * 20 + key}]}
    return orjson.dumps(body)


async def _echo(request: web.Request) -> web.StreamResponse:
    payload = await request.json()
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    question = payload["messages"][0]["content"]
    if payload.get("seed") == 1:  # the "broken" variant of the test
        return web.Response(body=_broken_body(question, key), content_type="application/json")
    if "5 + 10" in question and payload.get("stream"):  # an oversized header echoing the bearer
        return web.Response(headers={"X-Echo": f"Bearer {key} " + "p" * 9000}, text="{}")
    if payload.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if "4 + 8" in question:
            await resp.write(_sse({"error": {"message": "y" * 1988 + key}}))
        else:
            base = {"id": key, "object": "chat.completion.chunk", "model": "m"}
            delta = {"content": f"42 {key}", "tool_calls": [{"index": 0, "id": "t", "function": {"arguments": key}}]}
            await resp.write(_sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
            await resp.write(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    status, body = _echo_body(question, key)
    return web.json_response(body, status=status)


@pytest.fixture
def echo(loop_thread: Any) -> Any:
    url, runner = loop_thread.call(serve_loopback(_echo))
    yield url
    loop_thread.call(runner.cleanup())


def _written(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("stream", "seed"), [(False, 0), (True, 0), (False, 1)], ids=["plain", "streamed", "broken-answers"]
)
def test_a_key_echoing_server_leaves_no_key_in_anything_written(
    tmp_path, dataset, echo, monkeypatch, capsys, stream, seed
) -> None:
    monkeypatch.setenv(ENV, KEY)
    cfg = base_config(tmp_path, dataset, echo, params={"max_tokens": 64, "stream": stream, "seed": seed})
    cfg["providers"]["sim"]["api_key_env"] = ENV
    cfg["params"]["logprobs"] = True
    config = write_config(tmp_path, cfg)
    code = main(["-vv", "run", str(config), "--no-progress"])
    out, err = capsys.readouterr()
    run_dir = Path(out.strip().splitlines()[-1])
    assert code in (0, 1), err
    assert main(["report", str(run_dir)]) == 0
    out2, err2 = capsys.readouterr()

    files = _written(tmp_path / "reports")
    assert {p.name for p in files} >= {"journal.jsonl", "results.parquet", "manifest.json", "report.html"}
    # the journal's lines are compressed: a key in them would be invisible to a byte search, so
    # the search runs over what they hold
    journal = b"\n".join(orjson.dumps(decode(line)) for line in files[run_dir / "journal.jsonl"].splitlines())
    files[run_dir / "journal.jsonl"] = journal
    assert journal.count(b"***") >= 4, "the echoes were recorded, masked"
    pieces = [KEY.encode(), KEY[:12].encode(), KEY[-12:].encode()]
    for path, data in files.items():
        for piece in pieces:
            assert piece not in data, f"{piece!r} in {path}"
    for text in (out, err, out2, err2):
        for piece in pieces:
            assert piece.decode() not in text
    # the sound parts of the answers are still there
    assert b'"content":"42' in journal


def test_a_key_with_a_trailing_newline_is_stripped_before_sending(tmp_path, dataset, scripted, cli, monkeypatch):
    monkeypatch.setenv(ENV, KEY + "\r\n")
    srv = scripted()
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["providers"]["sim"]["api_key_env"] = ENV
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    assert {h["Authorization"] for h in srv.headers} == {f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("value", "says"),
    [(KEY[:10] + "\n" + KEY[10:], "a line break"), (KEY[:10] + " " + KEY[10:], "a space"), (KEY + "é€", "Latin-1")],
    ids=["newline-inside", "space-inside", "not-latin1"],
)
def test_a_key_that_cannot_travel_in_a_header_is_refused_without_echoing_it(
    tmp_path, dataset, scripted, cli, monkeypatch, value, says
) -> None:
    monkeypatch.setenv(ENV, value)
    srv = scripted()
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["providers"]["sim"]["api_key_env"] = ENV
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 2
    assert r.err.count("evalrun: error:") == 1 and "Traceback" not in r.err
    assert ENV in r.err and says in r.err and "api_key_env" in r.err
    assert KEY[:10] not in r.err and KEY[10:] not in r.err
    assert srv.requests == []


def test_a_key_like_api_key_env_is_not_echoed(tmp_path, dataset, scripted, cli) -> None:
    google_like = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"  # matches the variable-name pattern
    cfg = base_config(tmp_path, dataset, scripted().base_url)
    cfg["providers"]["sim"]["api_key_env"] = google_like
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "looks like an API key" in r.err
    assert google_like not in r.err and google_like[:12] not in r.err


def test_a_key_given_by_set_is_not_echoed(tmp_path, dataset, scripted, cli) -> None:
    google_like = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
    config = write_config(tmp_path, base_config(tmp_path, dataset, scripted().base_url))
    for item in (f"providers.sim.api_key_env={google_like}", f"providers.sim.headers.X-Token={google_like}"):
        r = cli("validate", config, "--set", item)
        assert r.code == 2 and r.err.count("evalrun: error:") == 1, r.err
        assert google_like not in r.err and google_like[:12] not in r.err, r.err
