"""The simulator over real HTTP on 127.0.0.1: answers, usage, logprobs, streaming, faults.

Every async test starts its own simulator (port 0) in the test's event loop with
latency_scale=0, except the few where latency is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from evalrun.sim import SimOptions, add_sim_arguments, options_from_args, start_simulator
from evalrun.sim.tasks import find_arithmetic, find_multiple_choice, format_number
from evalrun.sim.tokens import tokenize

try:
    import jsonschema
except ImportError:  # pragma: no cover - the dev venv has it
    jsonschema = None

PRO31, PRO3, FLASH = "gemini-3.1-pro-preview", "gemini-3-pro-preview", "gemini-2.5-flash-lite"
ROOT = Path(__file__).resolve().parents[1]


# ---- fixtures and helpers --------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def sim():
    handle = await start_simulator(SimOptions(latency_scale=0))
    yield handle
    await handle.close()


@pytest_asyncio.fixture(loop_scope="function")
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


def user(text: str, model: str = FLASH, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(client, sim, body, headers=None, raw: bytes | None = None):
    """(status, headers, body bytes) of one chat completion."""
    data = raw if raw is not None else json.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with client.post(sim.base_url + "/chat/completions", data=data, headers=hdrs) as r:
        return r.status, r.headers, await r.read()


async def ok(client, sim, body, headers=None) -> dict:
    status, _, data = await post(client, sim, body, headers)
    assert status == 200, data
    return json.loads(data)


async def sse(client, sim, body) -> tuple[list[dict], list[str]]:
    """(parsed chunks, raw lines) of a streamed completion."""
    async with client.post(sim.base_url + "/chat/completions", json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = (await r.read()).decode()
    lines = [ln for ln in text.split("\n") if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1] if ln.startswith("data: ")]
    return chunks, lines


def validate(instance, schema) -> None:
    if jsonschema is not None:
        jsonschema.validate(instance, schema)
        return
    kind = schema.get("type")  # pragma: no cover - hand check when jsonschema is missing
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if "enum" in schema:
        assert instance in schema["enum"]
    if kind:
        assert isinstance(instance, types[kind])
    if kind == "object":
        assert set(schema.get("required", ())) <= set(instance)
        for k, sub in schema.get("properties", {}).items():
            if k in instance:
                validate(instance[k], sub)
    if kind == "array":
        for item in instance:
            validate(item, schema.get("items", {}))


def arithmetic_questions(n: int) -> list[tuple[str, str]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        op = rng.choice("+-*")
        expr = f"{a} {op} {b}" if i % 2 else f"({a} {op} {b}) * {c}"
        out.append((expr, format_number(find_arithmetic(expr).value)))
    return out


async def accuracy(client, sim, model: str, questions, **params) -> float:
    sem = asyncio.Semaphore(32)

    async def one(expr: str, truth: str) -> bool:
        async with sem:
            r = await ok(client, sim, user(f"What is {expr}? Reply with just the number.", model, **params))
        return r["choices"][0]["message"]["content"] == truth

    results = await asyncio.gather(*(one(e, t) for e, t in questions))
    return sum(results) / len(results)


# ---- pure parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("What is 17 + 25?", "42"),
        ("Compute 12 * 7 - 3.", "81"),
        ("(4 + 5) * 3 = ?", "27"),
        ("What is 144 / 12?", "12"),
        ("10 / 3", "3.33"),
        ("2 / 3", "0.67"),
        ("7 / 2", "3.5"),
        ("-(3 - 5) * 2", "4"),
        ("Q: 2 + 3 * 4", "14"),
        ("A) 12 + 3", "15"),
        ("6 × 7", "42"),
    ],
)
def test_arithmetic_parsing(text, expected):
    found = find_arithmetic(text)
    assert found is not None and format_number(found.value) == expected


@pytest.mark.parametrize("text", ["no numbers here", "just 42", "1 / 0", "version 3 of 5"])
def test_arithmetic_rejects(text):
    assert find_arithmetic(text) is None


def test_multiple_choice_detection_and_tokenizer_is_lossless():
    mc = find_multiple_choice("What is 2+2?\nA) 3\nB. 4\n(C) 5\nAnswer:")
    assert mc is not None and mc.letters == ("A", "B", "C") and mc.texts == ("3", "4", "5")
    assert find_multiple_choice("A) one\nB) two") is None  # no cue asking for an option
    text = "Héllo,  wörld!\n\n  x_y = 12345 + 6; naïve—test …"
    assert "".join(tokenize(text)) == text


def test_options_from_mapping_and_args():
    opts = SimOptions.from_mapping({"rate_500": 0.25, "unknown_models": ["m"], "quota_after": 3})
    assert opts.rate_500 == 0.25 and opts.unknown_models == ("m",) and opts.quota_after == 3
    with pytest.raises(ValueError, match="rate_5000"):
        SimOptions.from_mapping({"rate_5000": 1})
    with pytest.raises(ValueError, match="rate_429"):
        SimOptions.from_mapping({"rate_429": 1.5})
    with pytest.raises(ValueError, match="quota_status"):
        SimOptions.from_mapping({"quota_status": 500})
    with pytest.raises(ValueError, match="seed"):
        SimOptions.from_mapping({"seed": "x"})
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    ns = parser.parse_args(
        [
            "--port",
            "0",
            "--rate-429",
            "0.5",
            "--unknown-model",
            "a",
            "--unknown-model",
            "b",
            "--no-strict-models",
            "--model",
            "mine",
            "--retry-after",
            "none",
            "--rpm-limit",
            "10",
        ]
    )
    opts = options_from_args(ns)
    assert (opts.rate_429, opts.unknown_models, opts.strict_models, opts.retry_after, opts.rpm_limit) == (
        0.5,
        ("a", "b"),
        False,
        None,
        10,
    )
    assert opts.extra_models == ("mine",) and opts.served_models()[-1] == "mine"
    assert ns.port == 0
    assert options_from_args(parser.parse_args([])) == SimOptions()


# ---- answers ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_models_list(sim, client):
    async with client.get(sim.base_url + "/models") as r:
        data = await r.json()
    assert r.status == 200 and data["object"] == "list"
    assert {m["id"] for m in data["data"]} == {PRO3, PRO31, FLASH}


@pytest.mark.asyncio
async def test_deterministic_bytes_and_repeat_header(sim, client):
    body = user("Write a short note about mountains and rivers.", PRO3, logprobs=True, top_logprobs=3)
    s1, _, b1 = await post(client, sim, body)
    s2, _, b2 = await post(client, sim, body)
    assert s1 == s2 == 200 and b1 == b2
    assert (await post(client, sim, body, {"X-Evalrun-Repeat": "0"}))[2] == b1
    contents = set()
    for rep in range(1, 4):
        r = await ok(client, sim, body, {"X-Evalrun-Repeat": str(rep)})
        contents.add(r["choices"][0]["message"]["content"])
    assert len(contents | {json.loads(b1)["choices"][0]["message"]["content"]}) >= 3
    status, _, data = await post(client, sim, body, {"X-Evalrun-Repeat": "soon"})
    assert status == 400 and "X-Evalrun-Repeat" in json.loads(data)["error"]["message"]
    # a different seed option gives a different answer to the same request
    sim.options.seed = 1
    assert (await post(client, sim, body))[2] != b1


@pytest.mark.asyncio
async def test_model_skill_ordering_and_temperature(sim, client):
    questions = arithmetic_questions(200)
    acc = {m: await accuracy(client, sim, m, questions) for m in (PRO31, PRO3, FLASH)}
    assert acc[PRO31] > acc[PRO3] > acc[FLASH], acc
    assert 0.4 < acc[FLASH] < 0.75 and acc[PRO31] > 0.75, acc
    cold = await accuracy(client, sim, PRO3, questions, temperature=0.0)
    hot = await accuracy(client, sim, PRO3, questions, temperature=2.0)
    assert cold > hot + 0.1, (cold, hot)


@pytest.mark.asyncio
async def test_arithmetic_answer_formats(sim, client):
    r = await ok(client, sim, user("What is 17 + 25?", PRO31, temperature=0, n=8))
    for c in r["choices"]:
        assert re.fullmatch(r"The answer is -?\d+\.", c["message"]["content"])
    assert any(c["message"]["content"] == "The answer is 42." for c in r["choices"])
    r = await ok(client, sim, user("Compute 144 / 12. Answer with ONLY THE NUMBER.", PRO31, n=8))
    assert all(re.fullmatch(r"-?\d+", c["message"]["content"]) for c in r["choices"])
    wrong = [c["message"]["content"] for c in r["choices"] if c["message"]["content"] != "12"]
    assert "12" in [c["message"]["content"] for c in r["choices"]]
    assert all(1 <= abs(int(w) - 12) <= 10 for w in wrong)


@pytest.mark.asyncio
async def test_multiple_choice_letters_and_logprobs(sim, client):
    right = 0
    for i in range(40):
        a, b = 10 + i, 7 + 2 * i
        opts = [a + b - 1, a + b, a + b + 2, a + b + 5]
        random.Random(i).shuffle(opts)
        truth = "ABCD"[opts.index(a + b)]
        text = f"What is {a} + {b}?\n" + "\n".join(f"{L}) {v}" for L, v in zip("ABCD", opts)) + "\nAnswer:"
        r = await ok(client, sim, user(text, PRO31, temperature=0, logprobs=True, top_logprobs=4))
        choice = r["choices"][0]
        letter = choice["message"]["content"]
        assert letter in "ABCD" and len(letter) == 1
        top = choice["logprobs"]["content"][0]["top_logprobs"]
        assert sorted(t["token"] for t in top) == ["A", "B", "C", "D"]
        assert math.isclose(
            choice["logprobs"]["content"][0]["logprob"], next(t["logprob"] for t in top if t["token"] == letter)
        )
        right += letter == truth
    assert right >= 34, right
    # no arithmetic: the "true" letter is hashed knowledge, shared by the models
    agree = 0
    for i in range(30):
        text = f"Which city is the capital of region {i}?\nA) Foo\nB) Bar\nC) Baz\nD) Qux\nAnswer with the letter."
        a = await ok(client, sim, user(text, PRO31, temperature=0))
        b = await ok(client, sim, user(text, PRO3, temperature=0))
        agree += a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert agree >= 22, agree


@pytest.mark.asyncio
async def test_usage_invariants_effort_and_caching(sim, client):
    system = "You are a careful assistant. " * 12
    reasoning = {}
    for effort in ("none", "low", "medium", "high"):
        body = {
            "model": FLASH,
            "reasoning_effort": effort,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}],
        }
        u = (await ok(client, sim, body))["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        details = u["completion_tokens_details"]
        assert details["reasoning_tokens"] + details["text_tokens"] == u["completion_tokens"]
        cached = u["prompt_tokens_details"]["cached_tokens"]
        assert 32 <= cached <= u["prompt_tokens"] and cached % 16 == 0
        assert set(u) == {
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens",
            "output_tokens",
            "input_tokens_details",
        }
        reasoning[effort] = details["reasoning_tokens"]
    assert reasoning["none"] == 0 and 64 <= reasoning["low"] <= 128
    assert 256 <= reasoning["medium"] <= 512 and 1024 <= reasoning["high"] <= 2048
    # pro models think by default (medium) and cannot switch it off
    u = (await ok(client, sim, user("Hello", PRO3)))["usage"]
    assert 256 <= u["completion_tokens_details"]["reasoning_tokens"] <= 512
    assert u["prompt_tokens_details"]["cached_tokens"] == 0  # no system prompt
    u = (await ok(client, sim, user("Hello", PRO31, reasoning_effort="none")))["usage"]
    assert 64 <= u["completion_tokens_details"]["reasoning_tokens"] <= 128
    # images and audio are counted apart from text
    parts = [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "input_audio", "input_audio": {"data": "A" * 64_000, "format": "wav"}},
    ]
    u = (await ok(client, sim, {"model": FLASH, "messages": [{"role": "user", "content": parts}]}))["usage"]
    d = u["prompt_tokens_details"]
    assert d["image_tokens"] == 258 and d["audio_tokens"] == 75  # 48 kB at 16 kB/s = 3 s
    assert d["text_tokens"] + d["image_tokens"] + d["audio_tokens"] == u["prompt_tokens"]


@pytest.mark.asyncio
async def test_max_tokens_is_a_prefix_and_sets_length(sim, client):
    full = await ok(client, sim, user("Tell me about clouds", FLASH, logprobs=True))
    tokens = [t["token"] for t in full["choices"][0]["logprobs"]["content"]]
    assert "".join(tokens) == full["choices"][0]["message"]["content"] and len(tokens) >= 8
    cut = await ok(client, sim, user("Tell me about clouds", FLASH, max_tokens=3))
    assert cut["choices"][0]["message"]["content"] == "".join(tokens[:3])
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
    # thinking is spent first: a budget below it leaves no visible text at all
    pro = await ok(client, sim, user("Tell me about clouds", PRO3))
    r = pro["usage"]["completion_tokens_details"]["reasoning_tokens"]
    two = await ok(client, sim, user("Tell me about clouds", PRO3, max_completion_tokens=r + 2))
    assert two["choices"][0]["message"]["content"] == "".join(tokenize(pro["choices"][0]["message"]["content"])[:2])
    assert two["choices"][0]["finish_reason"] == "length"
    starved = await ok(client, sim, user("Tell me about clouds", PRO3, max_tokens=10))
    assert starved["choices"][0]["message"]["content"] == "" and starved["choices"][0]["finish_reason"] == "length"
    assert starved["usage"]["completion_tokens_details"] == {
        "text_tokens": 0,
        "audio_tokens": 0,
        "reasoning_tokens": 10,
    }


@pytest.mark.asyncio
async def test_stop_sequences(sim, client):
    full = (await ok(client, sim, user("Tell me about clouds", FLASH)))["choices"][0]["message"]["content"]
    word = full.split()[3]
    for stop in (word, [word, "zzz-not-there"]):
        r = await ok(client, sim, user("Tell me about clouds", FLASH, stop=stop))
        assert r["choices"][0]["message"]["content"] == full[: full.index(word)]
        assert r["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
@pytest.mark.parametrize("k", [0, 1, 5, 20])
async def test_logprobs_shape(sim, client, k):
    for text in ("Tell me about stars", "What is 17 + 25?"):
        r = await ok(client, sim, user(text, PRO3, logprobs=True, top_logprobs=k, n=3))
        for c in r["choices"]:
            entries = c["logprobs"]["content"]
            assert "".join(e["token"] for e in entries) == c["message"]["content"]
            for e in entries:
                assert e["logprob"] <= 0 and e["bytes"] == list(e["token"].encode())
                top = e["top_logprobs"]
                assert len(top) == k
                lps = [t["logprob"] for t in top]
                assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
                assert sum(math.exp(lp) for lp in lps) <= 1 + 1e-9
                assert len({t["token"] for t in top}) == k
                if k and e["logprob"] >= lps[-1]:
                    assert e["token"] in [t["token"] for t in top]
    plain = await ok(client, sim, user("Tell me about stars", PRO3))
    assert plain["choices"][0]["logprobs"] is None


@pytest.mark.asyncio
async def test_logprobs_reflect_confidence(sim, client):
    seen_right = seen_wrong = 0
    for expr, truth in arithmetic_questions(60):
        r = await ok(client, sim, user(f"{expr} = ? Reply with only the number.", FLASH, logprobs=True, top_logprobs=5))
        e = r["choices"][0]["logprobs"]["content"][0]
        alts = [t["token"] for t in e["top_logprobs"]]
        if e["token"] == truth:
            seen_right += 1
            assert e["logprob"] > math.log(0.5)
        else:
            seen_wrong += 1
            assert e["logprob"] < math.log(0.6) and truth in alts
    assert seen_right > 10 and seen_wrong > 5


@pytest.mark.asyncio
async def test_n_choices_and_usage_sum(sim, client):
    one = await ok(client, sim, user("Tell me about the sea", PRO3))
    three = await ok(client, sim, user("Tell me about the sea", PRO3, n=3))
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in three["choices"]}) == 3
    u = three["usage"]
    assert u["prompt_tokens"] == one["usage"]["prompt_tokens"]
    visible = sum(len(tokenize(c["message"]["content"])) for c in three["choices"])
    assert u["completion_tokens_details"]["text_tokens"] == visible
    assert u["completion_tokens"] == visible + u["completion_tokens_details"]["reasoning_tokens"]
    assert u["completion_tokens_details"]["reasoning_tokens"] >= 3 * 256


@pytest.mark.asyncio
async def test_json_object_and_json_schema(sim, client):
    r = await ok(
        client, sim, user("What is 6 * 7?", PRO31, temperature=0, n=4, response_format={"type": "json_object"})
    )
    for c in r["choices"]:
        obj = json.loads(c["message"]["content"])
        assert set(obj) == {"answer"} and isinstance(obj["answer"], int)
    assert any(json.loads(c["message"]["content"])["answer"] == 42 for c in r["choices"])
    r = await ok(client, sim, user("Describe a forest", FLASH, response_format={"type": "json_object"}))
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)
    schemas = [
        {
            "type": "object",
            "properties": {"result": {"type": "number"}, "reasoning": {"type": "string"}},
            "required": ["result", "reasoning"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 3, "maxLength": 20},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
                "level": {"type": "integer", "minimum": 1, "maximum": 5},
                "ok": {"type": "boolean"},
                "kind": {"enum": ["a", "b", "c"]},
                "inner": {"$ref": "#/$defs/inner"},
            },
            "required": ["name", "tags", "level", "ok", "kind", "inner"],
            "$defs": {
                "inner": {"type": "object", "properties": {"x": {"type": ["number", "null"]}}, "required": ["x"]}
            },
        },
    ]
    for schema in schemas:
        for text in ("What is (4 + 5) * 3?", "Describe Paris in spring"):
            body = user(
                text,
                PRO3,
                n=3,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "out", "strict": True, "schema": schema},
                },
            )
            for c in (await ok(client, sim, body))["choices"]:
                validate(json.loads(c["message"]["content"]), schema)
    r = await ok(
        client,
        sim,
        user(
            "What is (4 + 5) * 3?",
            PRO31,
            temperature=0,
            n=6,
            response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schemas[0]}},
        ),
    )
    assert 27 in [json.loads(c["message"]["content"])["result"] for c in r["choices"]]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add_numbers",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.mark.asyncio
async def test_tool_calls(sim, client):
    r = await ok(client, sim, user("What's the weather in Paris today?", PRO3, tools=[ADD, WEATHER]))
    c = r["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    (call,) = c["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    validate(args, WEATHER["function"]["parameters"])
    # auto and nothing relevant: plain text
    r = await ok(client, sim, user("Tell me a story", PRO3, tools=[WEATHER], tool_choice="auto"))
    assert r["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in r["choices"][0]["message"]
    r = await ok(client, sim, user("Tell me a story", PRO3, tools=[WEATHER], tool_choice="required"))
    assert r["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    r = await ok(client, sim, user("What's the weather in Rome?", PRO3, tools=[WEATHER], tool_choice="none"))
    assert r["choices"][0]["message"]["content"] and "tool_calls" not in r["choices"][0]["message"]
    named = {"type": "function", "function": {"name": "add_numbers"}}
    r = await ok(client, sim, user("What's the weather in Rome?", PRO3, tools=[WEATHER, ADD], tool_choice=named))
    call = r["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "add_numbers"
    validate(json.loads(call["function"]["arguments"]), ADD["function"]["parameters"])
    status, _, data = await post(
        client, sim, user("x", PRO3, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    )
    assert status == 400 and json.loads(data)["error"]["param"] == "tool_choice"


async def _assemble(client, sim, body) -> tuple[dict, list[str]]:
    """Rebuild a non-streaming response from the stream of the same request."""
    chunks, lines = await sse(client, sim, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    out: dict[int, dict] = {}
    for ch in chunks[:-1]:
        for c in ch["choices"]:
            acc = out.setdefault(
                c["index"], {"role": None, "content": None, "logprobs": None, "finish_reason": None, "tool_calls": None}
            )
            delta = c["delta"]
            acc["role"] = acc["role"] or delta.get("role")
            if "content" in delta:
                acc["content"] = (acc["content"] or "") + delta["content"]
            for tc in delta.get("tool_calls") or ():
                calls = acc["tool_calls"] = acc["tool_calls"] or []
                if tc.get("id"):
                    calls.append(
                        {
                            "id": tc["id"],
                            "type": tc["type"],
                            "function": {"name": tc["function"]["name"], "arguments": ""},
                        }
                    )
                calls[tc["index"]]["function"]["arguments"] += tc["function"].get("arguments", "")
            if c.get("logprobs") is not None:
                acc["logprobs"] = (acc["logprobs"] or []) + c["logprobs"]["content"]
            acc["finish_reason"] = c["finish_reason"] or acc["finish_reason"]
    assert json.loads(lines[0][6:])["choices"][0]["delta"] == {"role": "assistant"}
    return {"choices": out, "usage": usage}, lines


@pytest.mark.asyncio
async def test_streaming_equals_non_streaming(sim, client):
    bodies = [
        user("Tell me about stars and planets", PRO3, logprobs=True, top_logprobs=3, n=2),
        user("What is 17 + 25?", FLASH, logprobs=True, top_logprobs=1),
        user("Tell me about clouds", FLASH, max_tokens=5),
        user("Tell me about clouds", PRO3, max_tokens=5),
        user("What's the weather in Paris?", PRO31, tools=[WEATHER]),
        user("What is 6 * 7?", FLASH, response_format={"type": "json_object"}),
    ]
    keepalive = 0
    for body in bodies:
        plain = await ok(client, sim, body)
        streamed, lines = await _assemble(client, sim, body)
        keepalive += sum(ln.startswith(":") for ln in lines)
        assert streamed["usage"] == plain["usage"]
        assert sorted(streamed["choices"]) == [c["index"] for c in plain["choices"]]
        for c in plain["choices"]:
            s = streamed["choices"][c["index"]]
            assert s["role"] == "assistant" and s["finish_reason"] == c["finish_reason"]
            if c["message"]["content"] is None:
                assert s["content"] in (None, "")
            else:
                assert (s["content"] or "") == c["message"]["content"]
            assert s["tool_calls"] == c["message"].get("tool_calls")
            assert s["logprobs"] == (c["logprobs"]["content"] or None if c["logprobs"] else None)
    assert keepalive >= 1  # gateways interleave comments; clients must skip them
    # without include_usage there is no usage chunk
    chunks, _ = await sse(client, sim, user("Hi", FLASH, stream=True))
    assert all("usage" not in ch for ch in chunks)


# ---- errors and faults ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "patch, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": None}, "messages"),
        ({"model": None}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 65537}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
async def test_validation_400(sim, client, patch, param):
    body = {**user("hi"), **patch}
    body = {k: v for k, v in body.items() if v is not None}
    status, _, data = await post(client, sim, body)
    err = json.loads(data)["error"]
    assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert param in err["message"]


@pytest.mark.asyncio
async def test_not_json_is_400(sim, client):
    status, _, data = await post(client, sim, None, raw=b'{"model": "x", ')
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_auth_and_unknown_models(sim, client):
    sim.options.require_api_key = "sk-test"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, _, data = await post(client, sim, user("hi"), headers)
        assert status == 401 and json.loads(data)["error"]["type"] == "authentication_error"
    await ok(client, sim, user("hi"), {"Authorization": "Bearer sk-test"})
    sim.options.require_api_key = None
    sim.options.unknown_models = ("gemini-9",)
    status, _, data = await post(client, sim, user("hi", "gemini-9"))
    assert status == 404 and json.loads(data)["error"]["type"] == "not_found_error"
    sim.options.unknown_models = ()
    # strict by default: a misspelt name is refused as the real catalog would, OpenAI's code
    status, _, data = await post(client, sim, user("hi", "gemini-3-pro"))
    err = json.loads(data)["error"]
    assert (status, err["code"], err["type"], err["param"]) == (404, "model_not_found", "not_found_error", "model")
    assert "`gemini-3-pro`" in err["message"]
    await ok(client, sim, user("hi", PRO3))
    sim.options.extra_models = ("my-local-model",)  # served, and listed, once named
    await ok(client, sim, user("hi", "my-local-model"))
    async with client.get(sim.base_url + "/models") as r:
        assert "my-local-model" in {m["id"] for m in (await r.json())["data"]}
    assert (await post(client, sim, user("hi", "other-model")))[0] == 404
    sim.options.strict_models = False  # the opt-out: any name is answered
    await ok(client, sim, user("hi", "other-model"))


@pytest.mark.asyncio
async def test_random_429_and_retry_after(sim, client):
    sim.options.rate_429 = 1.0
    status, headers, data = await post(client, sim, user("hi"))
    assert status == 429 and headers["Retry-After"] == "1"
    assert json.loads(data)["error"]["type"] == "rate_limit_error"
    sim.options.retry_after = "Wed, 21 Oct 2026 07:28:00 GMT"
    assert (await post(client, sim, user("hi")))[1]["Retry-After"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    sim.options.retry_after = None
    status, headers, _ = await post(client, sim, user("hi"))
    assert status == 429 and "Retry-After" not in headers
    sim.options.rate_429 = 0.5
    statuses = [(await post(client, sim, user("hi")))[0] for _ in range(40)]
    assert 8 < statuses.count(429) < 32 and statuses.count(200) == 40 - statuses.count(429)


@pytest.mark.asyncio
async def test_5xx_faults(sim, client):
    sim.options.rate_500 = 1.0
    seen = {}
    for _ in range(40):
        status, headers, data = await post(client, sim, user("hi"))
        seen[status] = json.loads(data)["error"]["type"]
        if status == 503:
            assert headers["Retry-After"] == "1"
    assert seen == {500: "server_error", 502: "upstream_error", 503: "service_unavailable", 504: "gateway_timeout"}
    sim.options.status_5xx = 502
    assert {(await post(client, sim, user("hi")))[0] for _ in range(5)} == {502}


@pytest.mark.asyncio
async def test_hang_until_client_gives_up_or_hang_s(sim, client):
    sim.options.rate_hang = 1.0
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(
            sim.base_url + "/chat/completions", json=user("hi"), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    for _ in range(50):  # the handler is cancelled when the client disconnects
        if sim.stats.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert sim.stats.in_flight == 0 and sim.stats.faults["rate_hang"] == 1
    sim.options.hang_s = 0.2
    t = time.perf_counter()
    status, _, _ = await post(client, sim, user("hi"))
    assert status == 504 and 0.2 <= time.perf_counter() - t < 2


@pytest.mark.asyncio
async def test_malformed_error_200_and_null_usage(sim, client):
    sim.options.rate_malformed = 1.0
    status, headers, data = await post(client, sim, user("hi"))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)
    sim.options.rate_malformed = 0
    sim.options.rate_error_200 = 1.0
    status, _, data = await post(client, sim, user("hi"))
    assert status == 200 and json.loads(data) == {
        "error": {"message": "upstream model overloaded", "type": "upstream_error", "code": "upstream_error"}
    }
    sim.options.rate_error_200 = 0
    sim.options.rate_null_usage = 1.0
    first = await ok(client, sim, user("hi"))
    second = await ok(client, sim, user("hi"))
    assert first["usage"] is None and first["choices"][0]["message"]["content"]
    u = second["usage"]
    assert "total_tokens" not in u and u["completion_tokens"] is None and u["prompt_tokens"] > 0


@pytest.mark.asyncio
async def test_quota_and_fail_first(sim, client):
    sim.options.quota_after = 2
    await ok(client, sim, user("a"))
    await ok(client, sim, user("b"))
    status, _headers, data = await post(client, sim, user("c"))
    err = json.loads(data)["error"]
    assert status == 429 and err["code"] == err["type"] == "insufficient_quota" and "quota" in err["message"]
    sim.options.quota_status = 402
    assert (await post(client, sim, user("c")))[0] == 402
    sim.options.quota_after = None
    sim.options.fail_first = 2
    sim.options.fail_first_status = 429
    async with client.post(sim.base_url + "/sim/reset") as r:
        assert r.status == 200
    first = await post(client, sim, user("a"))
    assert first[0] == 429 and first[1]["Retry-After"] == "1"
    assert (await post(client, sim, user("a")))[0] == 429
    await ok(client, sim, user("a"))
    # auth is checked before fail_first, so a rejected key does not use up a failure
    sim.options.fail_first_status = 500
    sim.options.require_api_key = "k"
    sim.reset()
    assert (await post(client, sim, user("a")))[0] == 401
    assert (await post(client, sim, user("a"), {"Authorization": "Bearer k"}))[0] == 500
    assert (await post(client, sim, user("a"), {"Authorization": "Bearer k"}))[0] == 500
    await ok(client, sim, user("a"), {"Authorization": "Bearer k"})
    sim.options.fail_first_status = 400
    sim.reset()
    status, _, data = await post(client, sim, user("a"), {"Authorization": "Bearer k"})
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_rpm_and_tpm_windows(sim, client):
    sim.options.rpm_limit = 3
    for _ in range(3):
        await ok(client, sim, user("hi"))
    status, headers, data = await post(client, sim, user("hi"))
    assert status == 429 and json.loads(data)["error"]["type"] == "rate_limit_error"
    assert 55 <= int(headers["Retry-After"]) <= 60
    await ok(client, sim, user("hi", PRO3))  # windows are per model
    assert sim.stats.max_in_window == {FLASH: 3, PRO3: 1}
    sim.options.rpm_limit = None
    sim.options.tpm_limit = 1
    sim.reset()
    await ok(client, sim, user("hi"))  # an empty window admits even an oversized request
    status, headers, _ = await post(client, sim, user("hi"))
    assert status == 429 and 55 <= int(headers["Retry-After"]) <= 60
    assert sim.stats.count_429 == 1 and sim.stats.max_tokens_in_window[FLASH] > 1


@pytest.mark.asyncio
async def test_stats_and_max_in_flight(client):
    handle = await start_simulator(SimOptions(latency_ms=150, per_token_ms=0))
    try:
        t = time.perf_counter()
        await asyncio.gather(*(ok(client, handle, user(f"q{i}")) for i in range(7)))
        assert 0.15 <= time.perf_counter() - t < 1.0
        async with client.get(f"http://127.0.0.1:{handle.port}/sim/stats") as r:
            stats = await r.json()
        assert stats["max_in_flight"] == 7 and stats["in_flight"] == 0
        assert stats["requests"] == 7 and stats["by_status"] == {"200": 7} and stats["by_model"] == {FLASH: 7}
        assert len(stats["arrivals"]) == 7 and all(0 <= a < 5 for a in stats["arrivals"])
        assert stats["max_in_window"] == {FLASH: 7} and stats["tokens_total"] > 0
        assert handle.stats.max_in_flight == 7
        # latency_scale shrinks every delay
        handle.options.latency_ms, handle.options.latency_scale = 400, 0.5
        t = time.perf_counter()
        await ok(client, handle, user("x"))
        assert 0.2 <= time.perf_counter() - t < 0.39
    finally:
        await handle.close()


@pytest.mark.asyncio
async def test_streaming_latency_spreads_over_chunks(client):
    handle = await start_simulator(SimOptions(latency_ms=200, per_token_ms=10))
    try:
        body = user("Tell me about clouds", FLASH, stream=True)
        t = time.perf_counter()
        times = []
        async with client.post(handle.base_url + "/chat/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data: {"):
                    times.append(time.perf_counter() - t)
        assert 0.2 <= times[0] < 0.6  # first byte after the base latency (no thinking on flash-lite)
        assert times[-1] - times[0] >= 0.07  # tokens keep arriving after it
    finally:
        await handle.close()


@pytest.mark.asyncio
async def test_sim_options_and_reset_endpoints(sim, client):
    async with client.post(f"http://127.0.0.1:{sim.port}/sim/options", json={"rate_429": 1, "retry_after": 3}) as r:
        assert r.status == 200 and (await r.json())["rate_429"] == 1
    assert sim.options.rate_429 == 1 and sim.options.retry_after == "3"
    status, headers, _ = await post(client, sim, user("hi"))
    assert status == 429 and headers["Retry-After"] == "3"
    async with client.post(f"http://127.0.0.1:{sim.port}/sim/options", json={"rate_4299": 1}) as r:
        assert r.status == 400 and "rate_4299" in (await r.json())["error"]["message"]
    async with client.post(f"http://127.0.0.1:{sim.port}/sim/options", json={"rate_429": 0, "hang_s": -1}) as r:
        assert r.status == 400 and "hang_s" in (await r.json())["error"]["message"]
    assert sim.options.rate_429 == 1  # all or nothing
    assert sim.stats.requests == 1 and sim.stats.count_429 == 1
    async with client.post(f"http://127.0.0.1:{sim.port}/sim/reset") as r:
        assert r.status == 200
    async with client.get(f"http://127.0.0.1:{sim.port}/sim/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["arrivals"] == [] and stats["count_429"] == 0


@pytest.mark.asyncio
async def test_serve_forever_subprocess_matches_in_process(sim, client):
    """`python -m evalrun.sim` prints its URL, answers byte-identically, exits on SIGINT/SIGTERM."""
    body = user("What is 12 * 7 - 3? Tell me about clouds too.", PRO3, logprobs=True, top_logprobs=2)
    here = (await post(client, sim, body))[2]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evalrun.sim",
            "--port",
            "0",
            "--latency-scale",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            m = re.fullmatch(r"evalrun simulator listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
            assert m, line
            async with client.post(m.group(1) + "/chat/completions", json=body) as r:
                assert await r.read() == here
            proc.send_signal(sig)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert b"Traceback" not in await proc.stderr.read()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_fraction_answers_round_half_up():
    assert format_number(Fraction(1, 8)) == "0.13" and format_number(Fraction(-7, 2)) == "-3.5"


@pytest.mark.asyncio
async def test_faults_in_streams(sim, client):
    body = user("Tell me about clouds", FLASH, stream=True)
    sim.options.rate_malformed = 1.0
    async with client.post(sim.base_url + "/chat/completions", json=body) as r:
        text = (await r.read()).decode()
    events = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
    assert r.status == 200 and "[DONE]" not in events
    json.loads(events[0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[-1])
    sim.options.rate_malformed = 0
    sim.options.rate_error_200 = 1.0
    chunks, _ = await sse(client, sim, body)
    assert chunks == [
        {"error": {"message": "upstream model overloaded", "type": "upstream_error", "code": "upstream_error"}}
    ]
    sim.options.rate_error_200 = 0
    sim.options.rate_null_usage = 1.0
    chunks, _ = await sse(client, sim, {**body, "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is None


@pytest.mark.asyncio
async def test_hostile_schema_is_a_400_not_a_hang(sim, client):
    deep = {
        "type": "array",
        "minItems": 50,
        "items": {"type": "array", "minItems": 50, "items": {"type": "array", "minItems": 50, "items": {}}},
    }
    body = user("x", FLASH, response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": deep}})
    status, _, data = await post(client, sim, body)
    assert status == 400 and "schema" in json.loads(data)["error"]["message"]
