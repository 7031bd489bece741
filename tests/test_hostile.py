"""Hostile answers: one answer whose fields have the wrong type or range, among good ones.

Each case runs `evalrun run` over real HTTP against a scripted loopback server that answers
row q3 with the hostile shape and every other row properly. The run must end with a complete
results.parquet: five rows, four untouched, and the hostile one kept (status ok, what was
sound in it stored) with error_type malformed_response naming the field that became null.
No retry is spent on it: the answer was paid for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import Reply, base_config, completion, read_results, write_config

U64 = 2**64 - 1  # the largest integer orjson reads as an int: above int64, so Arrow cannot take it
HOSTILE_ROW = "q3"

Edit = Callable[[dict[str, Any]], None]


def at(path: str, value: Any) -> Edit:
    """Set body[a][b]… = value; numeric parts index lists (choices.0.message.content)."""

    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = copy.deepcopy(value)

    return edit


def token(tok: str = "42", **over: Any) -> dict[str, Any]:
    t = {"token": tok, "logprob": -0.1, "bytes": list(tok.encode()), "top_logprobs": []}
    t.update(over)
    return t


# (id, edit of a documented chat.completion body, the field path the row must name)
PLAIN: list[tuple[str, Edit, str]] = [
    ("usage-above-int64", at("usage.prompt_tokens", U64), "usage.prompt_tokens"),
    ("usage-just-above-int64", at("usage.total_tokens", 2**63), "usage.total_tokens"),
    ("usage-negative", at("usage.completion_tokens", -5), "usage.completion_tokens"),
    ("usage-huge-float", at("usage.prompt_tokens", 1e30), "usage.prompt_tokens"),
    ("usage-string-count", at("usage.prompt_tokens", "13"), "usage.prompt_tokens"),
    ("usage-bool-count", at("usage.completion_tokens", True), "usage.completion_tokens"),
    ("usage-a-string", at("usage", "lots"), "usage"),
    ("usage-a-list", at("usage", [1, 2]), "usage"),
    ("usage-details-a-number", at("usage.prompt_tokens_details", 5), "usage.prompt_tokens_details"),
    ("cached-above-int64", at("usage.prompt_tokens_details.cached_tokens", U64), "cached_tokens"),
    ("reasoning-a-bool", at("usage.completion_tokens_details.reasoning_tokens", True), "reasoning_tokens"),
    ("finish-reason-a-number", at("choices.0.finish_reason", 7), "choices[0].finish_reason"),
    ("finish-reason-an-object", at("choices.0.finish_reason", {"a": 1}), "choices[0].finish_reason"),
    ("logprobs-a-string", at("choices.0.logprobs", "yes"), "choices[0].logprobs"),
    ("logprobs-content-a-string", at("choices.0.logprobs", {"content": "x"}), "choices[0].logprobs.content"),
    ("logprobs-of-numbers", at("choices.0.logprobs", {"content": [1, 2, 3]}), "choices[0].logprobs.content"),
    ("logprob-token-a-number", at("choices.0.logprobs", {"content": [token(token=5)]}), "logprobs.content[0]"),
    ("logprob-a-string", at("choices.0.logprobs", {"content": [token(logprob="high")]}), "logprobs.content[0]"),
    ("logprob-bytes-above-int64", at("choices.0.logprobs", {"content": [token(bytes=[U64])]}), "logprobs.content[0]"),
    ("logprob-bytes-a-string", at("choices.0.logprobs", {"content": [token(bytes="42")]}), "logprobs.content[0]"),
    ("top-logprobs-a-string", at("choices.0.logprobs", {"content": [token(top_logprobs="x")]}), "top_logprobs"),
    ("top-logprobs-of-numbers", at("choices.0.logprobs", {"content": [token(top_logprobs=[5])]}), "top_logprobs"),
    (
        "top-logprob-bytes-above-int64",
        at("choices.0.logprobs", {"content": [token(top_logprobs=[token(bytes=[U64])])]}),
        "top_logprobs",
    ),
    ("content-a-number", at("choices.0.message.content", 42), "choices[0].message.content"),
    ("content-an-object", at("choices.0.message.content", {"text": "42"}), "choices[0].message.content"),
    ("content-part-text-a-number", at("choices.0.message.content", [{"type": "text", "text": 5}]), "part text"),
    ("tool-calls-a-string", at("choices.0.message.tool_calls", "call"), "choices[0].message.tool_calls"),
    ("tool-calls-of-numbers", at("choices.0.message.tool_calls", [1, 2]), "choices[0].message.tool_calls"),
    ("id-a-number", at("id", 12345), "id"),
    ("model-a-list", at("model", ["m"]), "model"),
    ("index-above-int64", at("choices.0.index", U64), "choices[0].index"),
    ("index-a-string", at("choices.0.index", "0"), "choices[0].index"),
    ("message-a-string", at("choices.0.message", "hi"), "choices[0].message"),
]


def _run(tmp_path: Path, dataset: Path, scripted: Any, cli: Any, hostile: Reply, **params: Any) -> Any:
    def answer(payload: dict[str, Any]) -> Reply:
        # q3's question is "3 + 6": only that request gets the hostile answer
        return hostile if "3 + 6" in payload["messages"][0]["content"] else good(payload)

    good: Callable[[dict[str, Any]], Reply] = params.pop("good", lambda p: Reply())
    srv = scripted(default=answer)
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["params"].update(params)
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    return srv, r


def _check(srv: Any, r: Any, names: str) -> Any:
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    assert len(srv.requests) == 5, "a paid answer with one bad field is kept, not retried"
    df = read_results(r.run_dir).set_index("row_id")
    assert len(df) == 5 and set(df.status) == {"ok"}
    good = df.drop(HOSTILE_ROW)
    assert good.error_type.isna().all() and good.error_message.isna().all()
    assert (good.content == "42").all() and (good.prompt_tokens == 13).all()
    row = df.loc[HOSTILE_ROW]
    assert row.error_type == "malformed_response"
    assert names in row.error_message and "null" in row.error_message, row.error_message
    manifest = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "completed" and manifest["counts"]["recorded"] == 5
    return row


@pytest.mark.parametrize("case", PLAIN, ids=[c[0] for c in PLAIN])
def test_one_hostile_answer_is_kept_marked_and_the_report_complete(tmp_path, dataset, scripted, cli, case) -> None:
    _id, edit, names = case
    body = completion()
    edit(body)
    row = _check(*_run(tmp_path, dataset, scripted, cli, Reply(json=body)), names)
    if not names.startswith(("usage", "cached", "reasoning")):
        assert row.prompt_tokens == 13  # the sound parts of the answer are stored
    if names in ("cached_tokens", "reasoning_tokens"):
        assert row.total_tokens == 18


def test_counts_that_would_overflow_the_totals_are_null(tmp_path, dataset, scripted, cli) -> None:
    """2^63-1 fits int64, but the summary's sums over rows would not: a count is at most 10^12."""
    body = completion(usage={"prompt_tokens": 2**63 - 1, "completion_tokens": 10**12})
    _srv, r = _run(tmp_path, dataset, scripted, cli, Reply(json=body))
    assert r.code == 0, r.err
    rows = pq.read_table(r.run_dir / "results.parquet").to_pylist()  # exact int64, no float detour
    row = next(x for x in rows if x["row_id"] == HOSTILE_ROW)
    assert row["prompt_tokens"] is None and row["completion_tokens"] == 10**12 and row["total_tokens"] is None
    assert row["status"] == "ok" and "usage.prompt_tokens" in row["error_message"]
    assert (r.run_dir / "summary.parquet").is_file()


# ---------------------------------------------------------------------------- streams


def chunk(delta: Any = None, **fields: Any) -> bytes:
    choice = {"index": 0, "delta": {} if delta is None else delta, "finish_reason": None}
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    for k, v in fields.items():
        (choice if k in ("index", "finish_reason", "logprobs") else body)[k] = v
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}
DONE = b"data: [DONE]\n\n"


def good_stream(payload: dict[str, Any]) -> Reply:
    usage = b"data: " + orjson.dumps({"id": "c1", "choices": [], "usage": USAGE}) + b"\n\n"
    return Reply(stream=[chunk({"content": "4"}), chunk({"content": "2"}), chunk(finish_reason="stop"), usage, DONE])


STREAMED: list[tuple[str, list[bytes], str]] = [
    ("finish-reason-a-number", [chunk({"content": "42"}), chunk(finish_reason=7)], "finish_reason"),
    ("delta-content-a-number", [chunk({"content": "42"}), chunk({"content": 5})], "delta.content"),
    ("logprobs-of-numbers", [chunk({"content": "42"}, logprobs={"content": [1]})], "logprobs.content"),
    ("logprobs-content-a-string", [chunk({"content": "42"}, logprobs={"content": "x"})], "logprobs.content"),
    (
        "tool-call-name-a-number",
        [chunk({"content": "42"}), chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": 5}}]})],
        "tool_calls.function.name",
    ),
    ("choice-index-above-int64", [chunk({"content": "42"}, index=U64)], "choices.index"),
    ("id-a-number", [chunk({"content": "42"}, id=7)], "id"),
    (
        "usage-above-int64",
        [
            chunk({"content": "42"}),
            b"data: " + orjson.dumps({"choices": [], "usage": {"prompt_tokens": U64}}) + b"\n\n",
        ],
        "usage.prompt_tokens",
    ),
]


@pytest.mark.parametrize("case", STREAMED, ids=[c[0] for c in STREAMED])
def test_one_hostile_stream_is_kept_marked_and_the_report_complete(tmp_path, dataset, scripted, cli, case) -> None:
    _id, pieces, names = case
    usage = b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n"
    tail = [] if names.startswith("usage") else [usage]
    hostile = Reply(stream=[*pieces, *tail, DONE])
    srv, r = _run(tmp_path, dataset, scripted, cli, hostile, stream=True, good=good_stream)
    row = _check(srv, r, names)
    assert row.content.startswith("42")


# ---------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_error_naming_its_target_and_is_not_followed(tmp_path, dataset, scripted, cli, status) -> None:
    elsewhere = scripted()  # another origin (another port): it must never be asked anything
    target = elsewhere.base_url + "/chat/completions"

    def answer(payload: dict[str, Any]) -> Reply:
        if "2 + 4" in payload["messages"][0]["content"]:
            return Reply(status, body=b"moved", headers={"Location": target, "Content-Type": "text/plain"})
        return Reply()

    srv = scripted(default=answer)
    r = cli("run", write_config(tmp_path, base_config(tmp_path, dataset, srv.base_url)), "--no-progress")
    assert r.code == 0, r.err
    assert elsewhere.requests == []
    assert len(srv.requests) == 5  # not retried: a redirect does not go away by asking again
    df = read_results(r.run_dir).set_index("row_id")
    row = df.loc["q2"]
    assert row.status == "error" and row.error_type == "redirect" and row.http_status == status
    assert target in row.error_message and "not followed" in row.error_message
    assert set(df.drop("q2").status) == {"ok"}
