"""The whole API surface through `evalrun run`: streaming (TTFT, inter-token latency, cut and
malformed streams), n > 1, tools, JSON mode and JSON Schema, conversations and per-row
parameters from the dataset, multimodal content parts, extra_body.

Each feature runs against the simulator and against a scripted server replaying the response
shapes of ../shared/api/README.md (usage with input_tokens/output_tokens beside the OpenAI
names and null details; SSE with a role chunk, keep-alives, empty deltas, tool-call pieces, a
usage chunk with `choices: []` and `[DONE]`). Assertions are on the Parquet rows.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import Reply, base_config, completion, serve_loopback, write_config

from evalrun.config.load import load_experiment
from evalrun.config.models import RetryConfig
from evalrun.run.grid.grid import build_plan
from evalrun.run.http.client import ProviderClient, Sent
from evalrun.run.http.errors import AttemptTimeout, StreamTruncated
from evalrun.run.rate.limiter import ModelLimiter
from evalrun.run.records.records import Cell, Choice, Completion, RequestSpec, Result, Usage
from evalrun.run.send.attempts import Admission, Attempts, Lane
from evalrun.run.send.slots import Slots
from evalrun.run.send.stops import Stops
from evalrun.run.store.store import result_rows
from evalrun.sim import SimOptions, start_simulator

DATASETS = Path(__file__).resolve().parent.parent / "datasets"

USAGE = {  # the documented shape: OpenAI names, the zero input_/output_tokens beside them, null details
    "prompt_tokens": 13,
    "completion_tokens": 5,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4, "text_tokens": 13, "audio_tokens": 0, "image_tokens": 0},
    "completion_tokens_details": {"text_tokens": 2, "audio_tokens": 0, "reasoning_tokens": 3},
    "input_tokens": 0,
    "output_tokens": 0,
    "input_tokens_details": None,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALC = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer", "confidence", "steps"],
    "properties": {
        "answer": {"type": "integer"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


# ---------------------------------------------------------------------------- helpers


def sim_config(tmp_path: Path, dataset: Path, **extra: Any) -> dict[str, Any]:
    return base_config(tmp_path, dataset, **extra)


def per_row(cfg: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The config with dataset.params_from_columns set (base_config's `dataset` is the path)."""
    cfg["dataset"] = {**cfg["dataset"], "params_from_columns": mapping}
    return cfg


def run(cli: Any, tmp_path: Path, cfg: dict[str, Any], *args: str, ok: bool = True) -> list[dict[str, Any]]:
    r = cli("run", write_config(tmp_path, cfg), "--no-progress", *args)
    if ok:
        assert r.code == 0, r.err
    return rows_of(r.run_dir)


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    rows = pq.read_table(run_dir / "results.parquet").to_pylist()
    return sorted(rows, key=lambda r: (str(r["stream"]), r["row_id"], r["choice_index"] or 0))


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"


def chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None, logprobs: Any = None) -> bytes:
    """One chat.completion.chunk event as the provider sends it."""
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return event(
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gemini-2.5-flash-lite",
            "choices": [choice],
        }
    )


def usage_chunk(usage: Any = USAGE) -> bytes:
    return event(
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gemini-2.5-flash-lite",
            "choices": [],
            "usage": usage,
        }
    )


def lp(token: str, logprob: float) -> dict[str, Any]:
    top = [
        {"token": token, "logprob": logprob, "bytes": list(token.encode())},
        {"token": "x", "logprob": -3.0, "bytes": [120]},
    ]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}


def stream_reply(*pieces: bytes | float) -> Reply:
    return Reply(stream=list(pieces))


def documented_stream(eol: bytes = b"\n", first_token_after: float = 0.0) -> list[bytes | float]:
    """Role chunk, keep-alive, content deltas with logprobs, both kinds of empty delta, finish, usage."""
    pieces: list[bytes | float] = [
        chunk({"role": "assistant", "content": ""}),
        KEEP_ALIVE,
        first_token_after,
        chunk({"content": "Hel"}, logprobs={"content": [lp("Hel", -0.1)]}),
        0.05,
        chunk({}),
        chunk({"content": ""}, logprobs={"content": []}),
        chunk({"content": "lo"}, logprobs={"content": [lp("lo", -0.2)]}),
        KEEP_ALIVE,
        0.1,
        chunk({"content": "!"}, logprobs={"content": [lp("!", -0.3)]}),
        chunk({}, finish="stop"),
        usage_chunk(),
        DONE,
    ]
    return [p.replace(b"\n", eol) if isinstance(p, bytes) else p for p in pieces]


# ---------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    "extra",
    [
        {"logprobs": True, "top_logprobs": 3, "n": 2},
        {"tools": [WEATHER, CALC], "tool_choice": "required"},
        {"response_format": JSON_SCHEMA, "logprobs": True},
    ],
    ids=["text-logprobs-n2", "tools", "json-schema"],
)
def test_streamed_and_plain_runs_of_the_simulator_agree(tmp_path, dataset, cli, extra) -> None:
    cfg = sim_config(tmp_path, dataset, grid={"stream": [False, True]})
    cfg["params"].update(extra)
    rows = run(cli, tmp_path, cfg)
    plain = {(r["row_id"], r["choice_index"]): r for r in rows if not r["stream"]}
    streamed = {(r["row_id"], r["choice_index"]): r for r in rows if r["stream"]}
    assert plain.keys() == streamed.keys() and len(plain) == 5 * extra.get("n", 1)
    same = [
        "content",
        "logprobs",
        "tool_calls",
        "finish_reason",
        "n_choices",
        "response_model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ]
    for key, p in plain.items():
        s = streamed[key]
        assert {c: s[c] for c in same} == {c: p[c] for c in same}, key
        assert p["ttft_s"] is p["stream_chunks"] is p["itl_mean_s"] is None
        assert 0 <= s["ttft_s"] <= s["latency_s"]
        if key[1] == 0:  # the stream's chunk count belongs to the request, like its usage
            assert s["stream_chunks"] >= 3 and s["prompt_tokens"] > 0
        else:
            assert s["stream_chunks"] is None and s["prompt_tokens"] is None


def test_simulator_stream_timings(tmp_path, dataset, cli) -> None:
    cfg = sim_config(
        tmp_path,
        dataset,
        params={"max_tokens": 256, "stream": True, "reasoning_effort": "none"},
        prompts={"p": [{"role": "user", "content": "Tell me about clouds, {question}."}]},
    )  # prose
    cfg["providers"]["sim"]["simulator"] = {"latency_ms": 150, "per_token_ms": 5}
    rows = run(cli, tmp_path, cfg, "--limit", "2")
    for r in rows:  # the first token comes after the base latency; later ones 5 ms a token apart
        assert 0.15 <= r["ttft_s"] < r["latency_s"]
        assert r["itl_mean_s"] >= 0.004 and r["itl_p95_s"] >= r["itl_mean_s"] * 0.99


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_documented_stream_shapes(tmp_path, dataset, scripted, cli, eol) -> None:
    srv = scripted(default=lambda p: Reply(stream=documented_stream(eol, first_token_after=0.25)))
    cfg = base_config(tmp_path, dataset, srv.base_url, params={"stream": True, "logprobs": True, "top_logprobs": 2})
    [row] = run(cli, tmp_path, cfg, "--limit", "1")
    body, headers = srv.requests[0], srv.headers[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert headers["Accept"] == "text/event-stream"
    assert row["status"] == "ok" and row["content"] == "Hello!" and row["finish_reason"] == "stop"
    assert row["logprobs"] == [lp("Hel", -0.1), lp("lo", -0.2), lp("!", -0.3)]
    assert row["stream_chunks"] == 8  # every JSON event: role, 3 contents, 2 empty, finish, usage
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (13, 5, 18)
    assert (row["cached_tokens"], row["reasoning_tokens"], row["completion_text_tokens"]) == (4, 3, 2)
    # from sending: the 0.25 s pause comes before the first content token; the empty deltas are no tokens
    assert 0.24 <= row["ttft_s"] <= row["latency_s"]
    assert 0.04 <= row["itl_mean_s"] <= 0.5 and row["itl_p95_s"] >= 0.07


@pytest.mark.parametrize("tail", [b"data: [DONE]", b"data: [DONE]\n"], ids=["no-newline", "no-blank-line"])
def test_done_without_its_blank_line_still_ends_the_stream(tmp_path, dataset, scripted, cli, tail) -> None:
    srv = scripted(default=lambda p: stream_reply(chunk({"content": "42"}), chunk({}, finish="stop"), tail))
    [row] = run(cli, tmp_path, base_config(tmp_path, dataset, srv.base_url, params={"stream": True}), "--limit", "1")
    assert row["status"] == "ok" and row["content"] == "42" and row["prompt_tokens"] is None


def test_usage_only_as_input_and_output_tokens(tmp_path, dataset, scripted, cli) -> None:
    usage = {"input_tokens": 21, "output_tokens": 8, "input_tokens_details": None}
    srv = scripted(default=lambda p: stream_reply(chunk({"content": "42"}, finish="stop"), usage_chunk(usage), DONE))
    [row] = run(cli, tmp_path, base_config(tmp_path, dataset, srv.base_url, params={"stream": True}), "--limit", "1")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (21, 8, 29)


TRUNCATED = [chunk({"role": "assistant"}), chunk({"content": "The answer"}), chunk({"content": " is 4"})]


def pool_keeps_partial() -> bool:
    """Whether the retry loop (attempts.py) carries a failed attempt's `exc.partial` onto the error Result."""

    class Client:
        base_url = "http://127.0.0.1:9/v1"

        async def send(self, spec: RequestSpec) -> Sent:
            exc = StreamTruncated("cut")
            exc.partial = Completion(None, None, [Choice(0, "so far", None)], Usage())
            return Sent(self.base_url, 0.0, error=exc)

        def note_failure(self, url: str) -> None: ...

        def note_success(self, url: str) -> None: ...

    async def one() -> Result | None:
        attempts = Attempts(RetryConfig(max_attempts=1), Stops(), Admission(), {})
        spec = RequestSpec("r", Cell("c", "p", "m", "p", {}), "row", 0, [], {}, 1)
        lane = Lane("p", "m", iter([]), Client(), ModelLimiter("m", None, None), Slots(1), 1)
        return await attempts.run(spec, lane)

    result = asyncio.run(one())
    return result is not None and result.partial is not None


def test_a_truncated_stream_is_retried_then_recorded_with_its_partial_content(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        [stream_reply(*TRUNCATED), Reply(stream=[*TRUNCATED, chunk({}, finish="stop"), DONE])],
        default=lambda p: stream_reply(*TRUNCATED),
    )
    cfg = base_config(tmp_path, dataset, srv.base_url, params={"stream": True})
    cfg["providers"]["sim"]["max_concurrency"] = 1
    rows = run(cli, tmp_path, cfg, "--limit", "2")
    ok, bad = sorted(rows, key=lambda r: r["status"], reverse=True)
    assert ok["status"] == "ok" and ok["content"] == "The answer is 4" and ok["retry_types"] == ["stream_truncated"]
    assert bad["error_type"] == "stream_truncated" and bad["attempts"] == 3 and bad["http_status"] == 200
    assert bad["retry_types"] == ["stream_truncated"] * 2 and "before [DONE]" in bad["error_message"]
    if pool_keeps_partial():  # pool.py: Result(..., partial=exc.partial)
        assert bad["content"] == "The answer is 4" and bad["choice_index"] is None and bad["stream_chunks"] == 3


async def _start_cutter(pieces: list[bytes]) -> tuple[str, web.AppRunner]:
    """A server that sends part of a stream, then drops the connection mid-body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for p in pieces:
            await resp.write(p)
        request.transport.close()  # type: ignore[union-attr]
        return resp

    return await serve_loopback(handle)


def _send(url: str, params: dict[str, Any], timeout_s: float = 5) -> Completion:
    cell = Cell("c", "p", "gemini-2.5-flash-lite", "p", params)
    spec = RequestSpec("r", cell, "row", 0, [{"role": "user", "content": "hi"}], {}, 1)

    async def go() -> Completion:
        async with aiohttp.ClientSession() as session:
            sent = await ProviderClient("p", session, [url], None, {}, timeout_s, 5, 3).send(spec)
        assert sent.url == url
        if sent.error is not None:  # an attempt's failure is returned, not raised: raise it for pytest.raises
            raise sent.error
        assert sent.completion is not None
        return sent.completion

    return asyncio.run(go())


@pytest.mark.parametrize("how", ["ends", "connection-drops", "stalls"])
def test_the_client_keeps_what_arrived_of_a_cut_stream(scripted, loop_thread, how) -> None:
    runner = None
    if how == "connection-drops":
        url, runner = loop_thread.call(_start_cutter(TRUNCATED))
    else:
        url = scripted(default=lambda p: stream_reply(*TRUNCATED, *([2.0, DONE] if how == "stalls" else []))).base_url
    try:
        with pytest.raises(AttemptTimeout if how == "stalls" else StreamTruncated) as caught:
            _send(url, {"stream": True}, timeout_s=0.5)
    finally:
        if runner is not None:
            loop_thread.call(runner.cleanup())
    partial = caught.value.partial
    assert partial is not None and partial.choices[0].content == "The answer is 4"
    assert partial.stream_chunks == 3 and partial.choices[0].finish_reason is None


def test_an_error_row_keeps_the_partial_answer() -> None:
    cell = Cell("c", "p", "m", "p", {"stream": True})
    spec = RequestSpec("r", cell, "row", 0, [{"role": "user", "content": "hi"}], {"id": "row"}, 1)
    partial = Completion(
        "chatcmpl-p",
        "m",
        [Choice(0, "The answer", None, logprobs=[lp("The", -0.1)], ttft_s=0.2)],
        Usage(),
        stream_chunks=2,
    )
    result = Result(
        spec,
        0.0,
        1.5,
        3,
        "http://x",
        http_status=200,
        error_type="stream_truncated",
        error_message="cut",
        partial=partial,
    )
    [row] = result_rows(result, "run", "exp", ("id",))
    assert row["status"] == "error" and row.get("choice_index") is None
    kept = (row["content"], row["ttft_s"], row["stream_chunks"], row["response_id"])
    assert kept == ("The answer", 0.2, 2, "chatcmpl-p")
    assert row["logprobs"] == [lp("The", -0.1)] and row["prompt_tokens"] is None


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"id": "x", "choices": [{"delta": {"content": "Hi"\n\n',
        b"data: [1, 2]\n\n",
        event({"id": "x", "choices": {"0": {"delta": {}}}}),
        event({"id": "x", "choices": [{"index": 0, "delta": "Hi"}]}),
        event({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [7]}}]}),
    ],
    ids=["cut-json", "not-an-object", "choices-not-a-list", "delta-not-an-object", "tool-call-not-an-object"],
)
def test_a_malformed_chunk_is_malformed_response_and_retried(tmp_path, dataset, scripted, cli, bad) -> None:
    srv = scripted(default=lambda p: stream_reply(chunk({"content": "Hi"}), bad, chunk({}, finish="stop"), DONE))
    [row] = run(
        cli, tmp_path, base_config(tmp_path, dataset, srv.base_url, params={"stream": True}), "--limit", "1", ok=False
    )
    assert row["error_type"] == "malformed_response" and row["attempts"] == 3 and len(srv.requests) == 3


def test_an_error_event_in_a_stream_is_error_in_200(tmp_path, dataset, scripted, cli) -> None:
    err = event({"error": {"message": "upstream model overloaded", "type": "upstream_error"}})
    srv = scripted([stream_reply(chunk({"role": "assistant"}), err)])
    [row] = run(cli, tmp_path, base_config(tmp_path, dataset, srv.base_url, params={"stream": True}), "--limit", "1")
    assert row["status"] == "ok" and row["retry_types"] == ["error_in_200"]


def test_simulator_cut_streams_are_stream_truncated(tmp_path, dataset, cli) -> None:
    cfg = sim_config(tmp_path, dataset, params={"max_tokens": 256, "stream": True})
    cfg["providers"]["sim"]["simulator"] = {"latency_scale": 0, "rate_malformed": 1.0}
    rows = run(cli, tmp_path, cfg, "--limit", "2", ok=False)
    assert {r["error_type"] for r in rows} == {"stream_truncated"} and {r["attempts"] for r in rows} == {3}


# ---------------------------------------------------------------------------- n > 1


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_give_a_row_each_and_usage_once(tmp_path, dataset, loop_thread, cli, stream) -> None:
    sim = loop_thread.call(start_simulator(SimOptions.from_mapping({"latency_scale": 0})))
    try:
        cfg = base_config(tmp_path, dataset, sim.base_url, params={"max_tokens": 256, "n": 3, "stream": stream})
        r = cli("run", write_config(tmp_path, cfg), "--no-progress")
        assert r.code == 0, r.err
        rows = rows_of(r.run_dir)
        billed = sim.stats.tokens_total  # what the server counted, request by request
    finally:
        loop_thread.call(sim.close())
    assert len(rows) == 15 and sorted({r["choice_index"] for r in rows}) == [0, 1, 2]
    assert all(r["n_choices"] == 3 for r in rows)
    first = [r for r in rows if r["choice_index"] == 0]
    assert all(r["prompt_tokens"] and r["total_tokens"] for r in first)
    assert all(r["prompt_tokens"] is None and r["total_tokens"] is None for r in rows if r["choice_index"])
    assert sum(r["total_tokens"] or 0 for r in rows) == billed
    summary = pq.read_table(r.run_dir / "summary.parquet").to_pylist()
    assert [s["prompt_tokens"] for s in summary] == [sum(r["prompt_tokens"] for r in first)]
    assert [(s["requests"], s["rows"]) for s in summary] == [(5, 15)]


def test_documented_n2_body_and_interleaved_stream(tmp_path, dataset, scripted, cli) -> None:
    interleaved = [
        chunk({"role": "assistant"}, 0),
        chunk({"role": "assistant"}, 1),
        chunk({"content": "4"}, 0),
        chunk({"content": "5"}, 1),
        chunk({"content": "2"}, 0),
        chunk({}, 1, "stop"),
        chunk({}, 0, "stop"),
        usage_chunk(),
        DONE,
    ]
    plain = completion("42", n=2, usage=USAGE)
    srv = scripted(default=lambda p: Reply(stream=interleaved) if p.get("stream") else Reply(json=plain))
    cfg = base_config(tmp_path, dataset, srv.base_url, params={"n": 2}, grid={"stream": [False, True]})
    rows = run(cli, tmp_path, cfg)
    assert len(rows) == 20 and sum(r["prompt_tokens"] or 0 for r in rows) == 10 * 13
    streamed = [r for r in rows if r["stream"]][:2]
    assert [(r["choice_index"], r["content"]) for r in streamed] == [(0, "42"), (1, "5")]
    assert [r["finish_reason"] for r in streamed] == ["stop", "stop"]


# ---------------------------------------------------------------------------- tools


@pytest.mark.parametrize("stream", [False, True])
def test_simulator_tool_calls_are_recorded(tmp_path, dataset, cli, stream) -> None:
    cfg = sim_config(
        tmp_path,
        dataset,
        params={"max_tokens": 512, "stream": stream, "tools": [WEATHER, CALC]},
        grid={"tool_choice": ["required", "none"]},
    )
    rows = run(cli, tmp_path, cfg)
    for r in rows:
        if r["tool_choice"] == "none":
            assert r["tool_calls"] is None and r["finish_reason"] == "stop" and r["content"]
            continue
        [call] = json.loads(r["tool_calls"])
        assert r["finish_reason"] == "tool_calls" and r["content"] is None
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in ("get_weather", "calculate")
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_documented_tool_call_shapes(tmp_path, dataset, scripted, cli) -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "calculate", "arguments": '{"expression": "2+2"}'}},
    ]
    plain = completion(
        None,
        usage=USAGE,
        message={"role": "assistant", "content": None, "tool_calls": calls},
        finish_reason="tool_calls",
    )
    pieces = [  # two parallel calls, their arguments in interleaved pieces; id and name only in the first
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "calculate", "arguments": '{"expr'},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Lyon"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": 'ession": "2+2"}'}}]}),
        chunk({}, finish="tool_calls"),
        usage_chunk(),
        DONE,
    ]
    srv = scripted(default=lambda p: Reply(stream=pieces) if p.get("stream") else Reply(json=plain))
    cfg = base_config(
        tmp_path,
        dataset,
        srv.base_url,
        params={"tools": [WEATHER, CALC], "tool_choice": "auto"},
        grid={"stream": [False, True]},
    )
    rows = run(cli, tmp_path, cfg, "--limit", "1")
    assert [json.loads(r["tool_calls"]) for r in rows] == [calls, calls]
    assert [r["finish_reason"] for r in rows] == ["tool_calls"] * 2 and [r["content"] for r in rows] == [None, None]
    assert all(body["tools"] == [WEATHER, CALC] and body["tool_choice"] == "auto" for body in srv.requests)
    assert rows[1]["ttft_s"] is not None  # a tool-call delta is the first output token


def test_tools_and_tool_choice_per_row(tmp_path, cli, scripted) -> None:
    """datasets/tools.jsonl: each row its own tools and tool_choice (or none), on the simulator and
    as the bodies a server receives; the report's parameter columns hold each row's values."""
    data = [orjson.loads(line) for line in (DATASETS / "tools.jsonl").read_bytes().splitlines()]
    ask = {"ask": [{"role": "user", "content": "{question}"}]}
    cfg = per_row(
        sim_config(tmp_path, DATASETS / "tools.jsonl", prompts=ask), {"tools": "tools", "tool_choice": "tool_choice"}
    )
    rows = run(cli, tmp_path, cfg)
    by_id = {r["row_id"]: r for r in rows}
    for d in data:
        r = by_id[d["id"]]
        assert r["tools"] == (orjson.dumps(d["tools"]).decode() if d["tools"] else None)
        assert r["tool_choice"] == d["tool_choice"]
        called = [c["function"]["name"] for c in json.loads(r["tool_calls"] or "[]")]
        assert called == ([d["expected_tool"]] if d["expected_tool"] else []), d["id"]
    srv = scripted()
    cfg["providers"] = {"sim": {"base_urls": [srv.base_url], "max_concurrency": 1}}
    run(cli, tmp_path, cfg)
    bodies = {b["messages"][0]["content"]: b for b in srv.requests}
    for d in data:
        body = bodies[d["question"]]
        assert body.get("tools") == d["tools"] and body.get("tool_choice") == d["tool_choice"]


def test_row_parameters_are_part_of_the_request_id(tmp_path) -> None:
    cfg = base_config(tmp_path, DATASETS / "tools.jsonl", prompts={"ask": [{"role": "user", "content": "{question}"}]})
    ids = []
    for mapping in ({}, {"tools": "tools"}, {"tools": "tools", "tool_choice": "tool_choice"}):
        cfg["dataset"] = {"path": str(DATASETS / "tools.jsonl"), "params_from_columns": mapping}
        ids.append([s.request_id for s in build_plan(load_experiment(write_config(tmp_path, cfg))).specs()])
    assert len({i for run_ids in ids for i in run_ids}) == 3 * len(ids[0])


@pytest.mark.parametrize(
    "rows, params, mapping, says",
    [
        (
            [{"q": "a", "t": 0.5}, {"q": "b", "t": 5}],
            {},
            {"temperature": "t"},
            (
                "data.jsonl:2:",
                "column 't' (dataset.params_from_columns.temperature)",
                "less than or equal to 2",
                "got 5",
            ),
        ),
        (
            [{"q": "a", "tools": [WEATHER]}, {"q": "b", "tools": None}],
            {"tool_choice": "required"},
            {"tools": "tools"},
            ("data.jsonl:2:", "tool_choice needs tools", "this row sets no parameter"),
        ),
        (
            [{"q": "a", "lp": False}],
            {"logprobs": True, "top_logprobs": 2},
            {"logprobs": "lp"},
            ("data.jsonl:1:", "top_logprobs needs logprobs", "logprobs from column 'lp'"),
        ),
        (
            [{"q": "a", "tools": [{"type": "function"}, 3]}],
            {},
            {"tools": "tools"},
            (
                "data.jsonl:1:",
                "tools[1]: Input should be a valid dictionary",
            ),
        ),
        ([{"q": "a"}], {}, {"tools": "tool_list"}, ("exp.yaml:", "no row has a column 'tool_list'")),
        (
            [{"q": "a"}],
            {},
            {"tols": "tools"},
            ("exp.yaml:", "'tols' is not a request parameter", "did you mean 'tools'"),
        ),
    ],
    ids=[
        "out-of-range",
        "tool_choice-without-row-tools",
        "logprobs-off-by-row",
        "bad-tool",
        "no-such-column",
        "unknown-parameter",
    ],
)
def test_per_row_parameters_are_checked_before_sending(tmp_path, cli, rows, params, mapping, says) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    cfg = per_row(
        base_config(tmp_path, path, params=params, prompts={"p": [{"role": "user", "content": "{q}"}]}), mapping
    )
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2, r.out
    for text in says:
        assert text in r.err, r.err


def test_per_row_parameters_from_csv_text(tmp_path, cli) -> None:
    path = tmp_path / "data.csv"
    tools = json.dumps([WEATHER]).replace('"', '""')
    path.write_text(f'id,q,t,tools\na,What is the weather in Oslo?,0.5,"{tools}"\nb,What is 2 + 2?,1,\n')
    cfg = per_row(
        sim_config(tmp_path, path, prompts={"p": [{"role": "user", "content": "{q}"}]}),
        {"temperature": "t", "tools": "tools"},
    )
    a, b = run(cli, tmp_path, cfg)
    assert (a["temperature"], json.loads(a["tools"]), a["finish_reason"]) == (0.5, [WEATHER], "tool_calls")
    assert (b["temperature"], b["tools"], b["finish_reason"]) == (1.0, None, "stop")


# ---------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("stream", [False, True])
def test_simulator_json_mode_and_schema(tmp_path, dataset, cli, stream) -> None:
    cfg = sim_config(
        tmp_path,
        dataset,
        params={"max_tokens": 512, "stream": stream},
        grid={"response_format": [{"type": "json_object"}, JSON_SCHEMA]},
    )
    rows = run(cli, tmp_path, cfg)
    assert len(rows) == 10
    for r in rows:
        obj = json.loads(r["content"])
        if "json_schema" in r["response_format"]:
            jsonschema.validate(obj, SCHEMA)
        assert isinstance(obj, dict) and "answer" in obj


def test_json_schema_per_row(tmp_path, cli) -> None:
    schemas = [
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {
            "type": "object",
            "properties": {"total": {"type": "number"}, "items": {"type": "array"}},
            "required": ["total", "items"],
        },
    ]
    path = tmp_path / "data.jsonl"
    questions = ["Where is the Louvre?", "Sum 3 and 4 apples."]
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {"id": f"r{i}", "q": q, "format": {"type": "json_schema", "json_schema": {"name": "s", "schema": s}}}
            )
            + b"\n"
            for i, (q, s) in enumerate(zip(questions, schemas))
        )
    )
    cfg = per_row(
        sim_config(tmp_path, path, prompts={"p": [{"role": "user", "content": "{q}"}]}), {"response_format": "format"}
    )
    rows = run(cli, tmp_path, cfg)
    for r, schema in zip(rows, schemas):
        jsonschema.validate(json.loads(r["content"]), schema)
        assert json.loads(r["response_format"])["json_schema"]["schema"] == schema


def test_response_format_passes_through_and_content_is_kept_verbatim(tmp_path, dataset, scripted, cli) -> None:
    text = '{ "answer" : 42,\n  "confidence": 0.9, "steps": [] }\n'
    srv = scripted(default=lambda p: Reply(json=completion(text, usage=USAGE)))
    cfg = base_config(tmp_path, dataset, srv.base_url, params={"response_format": JSON_SCHEMA})
    [row] = run(cli, tmp_path, cfg, "--limit", "1")
    assert srv.requests[0]["response_format"] == JSON_SCHEMA
    assert row["content"] == text and json.loads(row["response_format"]) == JSON_SCHEMA
    jsonschema.validate(json.loads(row["content"]), SCHEMA)


# ---------------------------------------------------------------------------- conversations, content parts


CONV_PROMPT = {"conv": [{"role": "system", "content": "Answer with only the number."}, {"from_column": "messages"}]}


def test_conversations_from_the_dataset(tmp_path, cli, scripted) -> None:
    """datasets/conversations.jsonl: the row's messages — assistant tool calls, a tool message, an
    image part — follow the prompt's system message unchanged, on a server and on the simulator."""
    path = DATASETS / "conversations.jsonl"
    data = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    srv = scripted()
    cfg = base_config(tmp_path, path, srv.base_url, prompts=CONV_PROMPT)
    cfg["providers"]["sim"]["max_concurrency"] = 1
    rows = run(cli, tmp_path, cfg)
    system = CONV_PROMPT["conv"][0]
    assert [b["messages"] for b in srv.requests] == [[system, *d["messages"]] for d in data]
    assert [json.loads(r["messages"]) for r in rows] == [[system, *d["messages"]] for d in data]
    cfg = sim_config(tmp_path, path, prompts=CONV_PROMPT, params={"max_tokens": 256, "stream": True})
    rows = run(cli, tmp_path, cfg)
    assert all(r["status"] == "ok" and r["content"] for r in rows)
    assert [r["prompt_image_tokens"] for r in rows] == [0, 0, 0, 258]


@pytest.mark.parametrize(
    "messages, says",
    [
        (
            [{"role": "bot", "content": "hi"}],
            "[0].role: must be one of system, developer, user, assistant, tool (got 'bot')",
        ),
        ("hello", "is text but not JSON"),
        ({"role": "user"}, "must be a list of messages, got dict"),
        ([{"role": "user", "content": "hi", "contnet": "x"}], "[0].contnet: unknown message key"),
        ([{"role": "user", "content": [{"text": "hi"}]}], "[0].content[0]: a content part is an object with a type"),
        ([{"role": "assistant", "content": None}], "[0].content: required"),
        ([], "holds no messages, and the prompt has no others"),
    ],
    ids=["role", "not-json", "not-a-list", "unknown-key", "part-without-type", "null-content", "empty"],
)
def test_bad_conversations_are_caught_with_their_line(tmp_path, cli, messages, says) -> None:
    path = tmp_path / "data.jsonl"
    good = [{"role": "user", "content": "hi"}]
    path.write_bytes(orjson.dumps({"id": "a", "m": good}) + b"\n" + orjson.dumps({"id": "b", "m": messages}) + b"\n")
    cfg = base_config(tmp_path, path, prompts={"p": [{"from_column": "m"}]})
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "data.jsonl:2: column 'm' (used as {from_column: m} by prompt 'p')" in r.err, r.err
    assert says in r.err, r.err


def test_a_conversation_column_the_rows_lack(tmp_path, dataset, cli) -> None:
    prompt = [{"from_column": "history"}, {"role": "user", "content": "{question}"}]
    cfg = base_config(tmp_path, dataset, prompts={"p": prompt})
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "data.jsonl:1: row has no column 'history', used as {from_column: history}" in r.err


AUDIO = base64.b64encode(bytes(32_000)).decode()  # 2 s of (assumed) 16 kB/s audio
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)


def _parts(image: str) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": "What is {question}? The picture shows it."},
        {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "input_audio", "input_audio": {"data": AUDIO, "format": "wav"}},
    ]


def test_content_parts_pass_through(tmp_path, dataset, scripted, cli) -> None:
    # braces that are no {column} stay; {{ }} are literal braces; {row_id}-style placeholders fill
    url = 'https://cdn.example/{0}/{{id}}/q{id}.png?f={"w":1}'
    srv = scripted()
    cfg = base_config(tmp_path, dataset, srv.base_url, prompts={"mm": [{"role": "user", "content": _parts(url)}]})
    run(cli, tmp_path, cfg, "--limit", "1")
    [sent] = srv.requests[0]["messages"]
    assert sent["content"][0]["text"] == "What is 1 + 2? The picture shows it."
    assert sent["content"][1:] == [
        _parts("")[1],
        {"type": "image_url", "image_url": {"url": 'https://cdn.example/{0}/{id}/qq1.png?f={"w":1}'}},
        _parts("")[3],
    ]
    cfg = sim_config(tmp_path, dataset, prompts={"mm": [{"role": "user", "content": _parts(PIXEL)}]})
    rows = run(cli, tmp_path, cfg)
    assert {r["prompt_image_tokens"] for r in rows} == {2 * 258} and min(r["prompt_audio_tokens"] for r in rows) >= 50


# ---------------------------------------------------------------------------- extra_body


@pytest.mark.parametrize("stream", [False, True])
def test_extra_body_reaches_the_top_level_of_the_request(tmp_path, dataset, scripted, cli, stream) -> None:
    extra = {
        "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "thinking_config": {"include_thoughts": False},
    }
    reply = stream_reply(chunk({"content": "3"}, finish="stop"), usage_chunk(), DONE) if stream else Reply()
    srv = scripted(default=lambda p: reply)
    params = {"extra_body": extra, "stream": stream, "temperature": 0.0}
    cfg = base_config(tmp_path, dataset, srv.base_url, params=params)
    [row] = run(cli, tmp_path, cfg, "--limit", "1")
    body = srv.requests[0]
    assert "extra_body" not in body and {k: body[k] for k in extra} == extra and body["temperature"] == 0.0
    assert json.loads(row["extra_body"]) == extra
    rows = run(cli, tmp_path, sim_config(tmp_path, dataset, params={"max_tokens": 64, "extra_body": extra}))
    assert {r["status"] for r in rows} == {"ok"}
