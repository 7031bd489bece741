"""A corpus of broken inputs: each one must stop evalrun before any request is sent.

For every case, run through the real CLI in-process against a scripted loopback server:
  1. exit code 2;
  2. stderr is one error starting `evalrun: error:` that names the file (the config, or the
     dataset for dataset problems), the line and/or key path, and what is allowed;
  3. no traceback;
  4. zero requests reached the server and no run directory (let alone a journal) exists.

A case is a base config (conftest.base_config pointed at the server) plus one edit, or raw
YAML text for syntax cases; `line` is either a number or a snippet of the written file whose
(first) line number the error must name.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import base_config

from evalrun.cli import main

MODEL = "gemini-2.5-flash-lite"
GOOD_ROWS = "".join(
    orjson.dumps({"id": f"q{i}", "question": f"{i} + {i}", "answer": 2 * i}).decode() + "\n" for i in range(1, 6)
)
UNSET_ENV = "EVALRUN_TEST_SURELY_UNSET_KEY"

Edit = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------ config edits


def _walk(cfg: dict[str, Any], dotted: str) -> tuple[Any, str]:
    *parents, last = dotted.split(".")
    node: Any = cfg
    for part in parents:
        node = node.setdefault(part, {})
    return node, last


def put(dotted: str, value: Any) -> Edit:
    """Set cfg[a][b]… = value (intermediate mappings are created)."""

    def edit(cfg: dict[str, Any]) -> None:
        node, last = _walk(cfg, dotted)
        node[last] = copy.deepcopy(value)

    return edit


def drop(dotted: str) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        node, last = _walk(cfg, dotted)
        del node[last]

    return edit


def rename(old: str, new: str) -> Edit:
    """Rename a top-level key, keeping its place in the file."""

    def edit(cfg: dict[str, Any]) -> None:
        items = [(new if k == old else k, v) for k, v in cfg.items()]
        cfg.clear()
        cfg.update(items)

    return edit


def both(*edits: Edit) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        for e in edits:
            e(cfg)

    return edit


def model_params(**params: Any) -> Edit:
    return put("models", [{"name": MODEL, "params": params}])


def jsonl(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else orjson.dumps(r).decode()) + "\n" for r in rows)


GOOGLE_LIKE_KEY = "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
# a valid experiment on the embedded simulator, for the raw-YAML cases ($DATA: the dataset)
MINIMAL = (
    "experiment: t\nmodels: [gemini-2.5-flash-lite]\nprompts:\n  p:\n"
    "    - {role: user, content: 'What is {question}?'}\ndataset: $DATA\n"
)


def bomb(parent: str, indent: str) -> str:
    """'Billion laughs': 10 levels of 9 aliases each, under `parent` (9^10 values expanded)."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return MINIMAL + parent + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    edit: Edit | None = None  # applied to the base config
    raw: str | None = None  # the config file's text instead ($DATA: the dataset path)
    data: str | None = None  # dataset text, written to data_name (and dataset.path points there)
    data_name: str = "data.jsonl"
    argv: tuple[str, ...] = ()  # more arguments after CONFIG
    cmd: str = "run"
    file: str | None = "config"  # the file the error names: "config", a dataset file name, or None
    line: int | str | None = None  # a line number, or a snippet of that file whose line is meant
    key: str | None = None  # the key path (or option) the error names
    says: tuple[str, ...] = ()  # what is allowed / what is wrong: distinctive substrings
    mkdir: str | None = None  # a folder to create under tmp_path first


def C(id: str, **kw: Any) -> Case:
    says = kw.pop("says", ())
    return Case(id, says=(says,) if isinstance(says, str) else tuple(says), **kw)


CASES: list[Case] = [
    # --- YAML syntax and shape ------------------------------------------------------------
    C(
        "yaml-bad-indent-list-item",
        raw="experiment: t\nmodels:\n  - a\n - b\n",
        line=4,
        says=("YAML syntax error", "check this line's indentation"),
    ),
    C(
        "yaml-bad-indent-key",
        raw="experiment: t\n  models: [a]\n",
        line=2,
        says=("YAML syntax error", "mapping values are not allowed here", "indentation"),
    ),
    C(
        "yaml-unclosed-bracket",
        raw="experiment: t\nmodels: [a, b\nprompts:\n  p: []\ndataset: $DATA\n",
        line=3,
        says=("YAML syntax error", "expected ',' or ']'", "flow sequence that starts at line 2"),
    ),
    C(
        "yaml-unclosed-quote",
        raw='experiment: t\ndescription: "never closed\nmodels: [a]\n',
        line=4,
        says=("YAML syntax error", "end of stream", "quoted scalar that starts at line 2"),
    ),
    C(
        "yaml-tab-indent",
        raw="experiment: t\nmodels:\n\t- a\n",
        line=3,
        says=("YAML syntax error", "indent with spaces, not tabs"),
    ),
    C(
        "yaml-duplicate-key",
        raw="experiment: t\nparams:\n  temperature: 0.2\n  max_tokens: 5\n  temperature: 0.7\n",
        line=5,
        key="params.temperature",
        says="repeated (first at line 3)",
    ),
    C(
        "top-level-list",
        raw="- experiment: t\n- models: [a]\n",
        line=1,
        says=("must be a YAML mapping", "experiment:, models:, prompts: and dataset:", "got a list"),
    ),
    C("top-level-scalar", raw="just some text\n", line=1, says=("must be a YAML mapping", "got a string")),
    C("empty-file", raw="", says=("is empty", "experiment:")),
    C("comments-only-file", raw="# nothing here yet\n", says=("is empty", "experiment:")),
    # --- required keys and types ----------------------------------------------------------
    C("missing-experiment", edit=drop("experiment"), key="experiment", says="required key is missing"),
    C("missing-models", edit=drop("models"), key="models", says="required key is missing"),
    C("missing-prompts", edit=drop("prompts"), key="prompts", says="required key is missing"),
    C("missing-dataset", edit=drop("dataset"), key="dataset", says="required key is missing"),
    C("models-not-a-list", edit=put("models", MODEL), line="models:", key="models", says=("must be a list", MODEL)),
    C("models-empty", edit=put("models", []), line="models:", key="models", says="must not be empty"),
    C("repeats-three", edit=put("repeats", "three"), line="repeats:", key="repeats", says=("valid integer", "'three'")),
    C(
        "params-a-list",
        edit=put("params", ["temperature", 0.5]),
        line="params:",
        key="params",
        says=("must be a mapping", "got a list"),
    ),
    C(
        "experiment-bad-name",
        edit=put("experiment", "my eval!"),
        line="experiment:",
        key="experiment",
        says="letters, digits",
    ),
    # --- out-of-range request parameters: params, grid values, a model's own params ------
    C(
        "params-temperature-2.5",
        edit=put("params.temperature", 2.5),
        line="temperature: 2.5",
        key="params.temperature",
        says="less than or equal to 2",
    ),
    C(
        "params-top_p-1.5",
        edit=put("params.top_p", 1.5),
        line="top_p: 1.5",
        key="params.top_p",
        says="less than or equal to 1",
    ),
    C(
        "params-top_k-0",
        edit=put("params.top_k", 0),
        line="top_k: 0",
        key="params.top_k",
        says="greater than or equal to 1",
    ),
    C(
        "params-max_tokens-0",
        edit=put("params.max_tokens", 0),
        line="max_tokens: 0",
        key="params.max_tokens",
        says="greater than or equal to 1",
    ),
    C(
        "params-max_tokens-70000",
        edit=put("params.max_tokens", 70000),
        line="max_tokens: 70000",
        key="params.max_tokens",
        says="less than or equal to 65536",
    ),
    C(
        "params-reasoning_effort-extreme",
        edit=put("params.reasoning_effort", "extreme"),
        line="reasoning_effort: extreme",
        key="params.reasoning_effort",
        says=("'none', 'low', 'medium' or 'high'", "'extreme'"),
    ),
    C(
        "grid-temperature-2.5",
        edit=put("grid", {"temperature": [0.0, 2.5]}),
        line="- 2.5",
        key="grid.temperature[1]",
        says="less than or equal to 2",
    ),
    C(
        "grid-frequency_penalty-3",
        edit=put("grid", {"frequency_penalty": [0, 3]}),
        line="- 3",
        key="grid.frequency_penalty[1]",
        says="less than or equal to 2",
    ),
    C("grid-n-0", edit=put("grid", {"n": [0, 1]}), line="- 0", key="grid.n[0]", says="greater than or equal to 1"),
    C(
        "grid-reasoning_effort-extreme",
        edit=put("grid", {"reasoning_effort": ["low", "extreme"]}),
        line="- extreme",
        key="grid.reasoning_effort[1]",
        says="'none', 'low', 'medium' or 'high'",
    ),
    C(
        "grid-top_logprobs-21",
        edit=both(put("params.logprobs", True), put("grid", {"top_logprobs": [5, 21]})),
        line="- 21",
        key="grid.top_logprobs[1]",
        says="less than or equal to 20",
    ),
    C(
        "model-presence_penalty-3",
        edit=model_params(presence_penalty=3),
        line="presence_penalty: 3",
        key="models[0].params.presence_penalty",
        says="less than or equal to 2",
    ),
    C(
        "model-top_p-1.5",
        edit=model_params(top_p=1.5),
        line="top_p: 1.5",
        key="models[0].params.top_p",
        says="less than or equal to 1",
    ),
    # --- parameters that need another one -------------------------------------------------
    C(
        "top_logprobs-without-logprobs",
        edit=put("params.top_logprobs", 5),
        line="params:",
        key="params",
        says="top_logprobs needs logprobs",
    ),
    C(
        "stream_options-without-stream",
        edit=put("params.stream_options", {"include_usage": True}),
        line="params:",
        key="params",
        says="stream_options is only allowed with stream: true",
    ),
    C(
        "tool_choice-without-tools",
        edit=put("params.tool_choice", "required"),
        line="params:",
        key="params",
        says="tool_choice needs tools",
    ),
    C(
        "stop-list-with-number",
        edit=put("params.stop", ["###", 3]),
        line="- 3",
        key="params.stop[1]",
        says=("valid string", "(got 3)"),
    ),
    C(
        "stop-a-number",
        edit=put("params.stop", 5),
        line="stop: 5",
        key="params.stop",
        says=("valid string; or must be a list", "(got 5)"),
    ),
    C(
        "tool_choice-bad-value",
        edit=both(put("params.tools", [{"type": "function"}]), put("params.tool_choice", "maybe")),
        line="tool_choice: maybe",
        key="params.tool_choice",
        says=("'none', 'auto' or 'required'", "(got 'maybe')"),
    ),
    C(
        "grid-cell-top_logprobs-without-logprobs",
        edit=put("grid", {"top_logprobs": [1, 2]}),
        line="grid:",
        says=("top_logprobs needs logprobs", "top_logprobs=1"),
    ),
    # --- unknown keys -----------------------------------------------------------------------
    C(
        "unknown-top-level-modles",
        edit=rename("models", "modles"),
        line="modles:",
        key="modles",
        says="did you mean 'models'",
    ),
    C(
        "unknown-params-temprature",
        edit=put("params.temprature", 0.5),
        line="temprature:",
        key="params.temprature",
        says=("did you mean 'temperature'", "allowed here:"),
    ),
    C(
        "unknown-provider-key",
        edit=put("providers.sim.base_url", "http://127.0.0.1:1/v1"),
        line="base_url:",
        key="providers.sim.base_url",
        says="did you mean 'base_urls'",
    ),
    C(
        "unknown-grid-axis",
        edit=put("grid", {"temprature": [0, 1]}),
        line="temprature:",
        key="grid.temprature",
        says=("unknown key", "did you mean 'temperature'", "allowed here: include, exclude, temperature"),
    ),
    # --- grid shape -------------------------------------------------------------------------
    C(
        "grid-axis-not-a-list",
        edit=put("grid", {"temperature": 0.5}),
        line="temperature: 0.5",
        key="grid.temperature",
        says="must be a non-empty list",
    ),
    C(
        "grid-axis-empty-list",
        edit=put("grid", {"temperature": []}),
        line="temperature: []",
        key="grid.temperature",
        says="must be a non-empty list",
    ),
    C(
        "grid-axis-duplicate-value",
        edit=put("grid", {"temperature": [0.5, 0.5]}),
        line="temperature:",
        key="grid.temperature",
        says="listed twice",
    ),
    C(
        "grid-exclude-unknown-model",
        edit=put("grid", {"temperature": [0, 1], "exclude": [{"model": "gemini-2.5-flash-lit"}]}),
        line="- model: gemini-2.5-flash-lit",
        key="grid.exclude[0].model",
        says=("is not in models:", f"did you mean '{MODEL}'"),
    ),
    C(
        "grid-exclude-unknown-axis",
        edit=put("grid", {"temperature": [0, 1], "exclude": [{"top_p": 0.5}]}),
        line="- top_p: 0.5",
        key="grid.exclude[0].top_p",
        says=("not a grid axis", "allowed: model, prompt, temperature"),
    ),
    C(
        "grid-excludes-everything",
        edit=put("grid", {"temperature": [0, 1], "exclude": [{"model": MODEL}]}),
        line="exclude:",
        says="the grid is empty",
    ),
    C(
        "grid-not-a-mapping",
        edit=put("grid", ["temperature"]),
        line="grid:",
        key="grid",
        says="must be a mapping of key: value lines (got a list)",
    ),
    C(
        "grid-include-out-of-range",
        edit=put("grid", {"temperature": [0, 1], "include": [{"temperature": 3}]}),
        line="- temperature: 3",
        key="grid.include[0].temperature",
        says="less than or equal to 2",
    ),
    C(
        "grid-model-axis",
        edit=put("grid", {"model": ["a", "b"]}),
        line="model:",
        key="grid.model",
        says="list them under models: and prompts:",
    ),
    C(
        "grid-prompt-axis",
        edit=put("grid", {"prompt": ["p"]}),
        line="prompt:",
        key="grid.prompt",
        says="list them under models: and prompts:",
    ),
    # --- providers and secrets --------------------------------------------------------------
    C(
        "provider-not-defined",
        edit=put("provider", "nosuch"),
        line="provider: nosuch",
        says=("provider 'nosuch' is not defined", "evolink, sim, simulator"),
    ),
    C("provider-typo", edit=put("provider", "simm"), line="provider: simm", says="did you mean 'sim'"),
    C(
        "model-provider-not-defined",
        edit=put("models", [{"name": MODEL, "provider": "nosuch"}]),
        line="provider: nosuch",
        says=("provider 'nosuch' is not defined", "define it under providers:"),
    ),
    C(
        "api_key-literal",
        edit=put("providers.sim.api_key", "sk-abcdef0123456789"),
        line="api_key:",
        key="providers.sim.api_key",
        says=("must not be written in the config", "api_key_env"),
    ),
    C(
        "header-authorization-literal",
        edit=put("providers.sim.headers", {"Authorization": "Bearer sk-abc"}),
        line="headers:",
        key="providers.sim.headers",
        says=("'Authorization'", "api_key_env"),
    ),
    C(
        "api_key_env-holds-a-key",
        edit=put("providers.sim.api_key_env", "sk-abc123def456"),
        line="api_key_env:",
        key="providers.sim.api_key_env",
        says="NAME of an environment variable",
    ),
    C(
        "plain-http-remote-with-key",
        edit=both(put("providers.sim.base_urls", ["http://example.com/v1"]), put("providers.sim.api_key_env", "X_KEY")),
        line="sim:",
        key="providers.sim",
        says=("plain http to a non-loopback host", "allow_insecure_http"),
    ),
    C(
        "api_key_env-unset",
        edit=put("providers.sim.api_key_env", UNSET_ENV),
        line="api_key_env:",
        key="providers.sim.api_key_env",
        says=(UNSET_ENV, "is not set", f"export {UNSET_ENV}="),
    ),
    C(
        "base_url-not-http",
        edit=put("providers.sim.base_urls", ["ftp://example.com/v1"]),
        line="base_urls:",
        key="providers.sim.base_urls",
        says="is not an http(s) URL",
    ),
    C(
        "simulator-with-base_urls",
        edit=put("providers.sim.kind", "simulator"),
        line="sim:",
        key="providers.sim",
        says="kind: simulator starts its own server; drop base_urls",
    ),
    C(
        "simulator-unknown-option",
        edit=put("providers.sim", {"kind": "simulator", "simulator": {"latency_scal": 0}}),
        line="latency_scal:",
        key="providers.sim.simulator.latency_scal",
        says=("unknown key", "did you mean 'latency_scale'"),
    ),
    C(
        "simulator-option-out-of-range",
        edit=put("providers.sim", {"kind": "simulator", "simulator": {"rate_429": 1.5}}),
        line="rate_429:",
        key="providers.sim.simulator.rate_429",
        says=("less than or equal to 1", "(got 1.5)"),
    ),
    C(
        "max_concurrency-0",
        edit=put("providers.sim.max_concurrency", 0),
        line="max_concurrency: 0",
        key="providers.sim.max_concurrency",
        says="greater than or equal to 1",
    ),
    # --- dataset ----------------------------------------------------------------------------
    C(
        "dataset-missing-file",
        edit=put("dataset.path", "nope.jsonl"),
        file="nope.jsonl",
        says=("dataset file not found", "dataset.path"),
    ),
    C(
        "dataset-unknown-extension",
        data=GOOD_ROWS,
        data_name="data.txt",
        file="data.txt",
        says=("unknown dataset format", ".jsonl, .csv or .parquet", "dataset.format"),
    ),
    C(
        "dataset-malformed-jsonl-line",
        data=jsonl({"id": "a", "question": "1"}, {"id": "b", "question": "2"}, '{"id": "c", "question": '),
        file="data.jsonl",
        line=3,
        says=("not valid JSON", "at column 26", "one complete JSON object"),
    ),
    C(
        "dataset-jsonl-array-line",
        data=jsonl({"id": "a", "question": "1"}, ["b", "2"]),
        file="data.jsonl",
        line=2,
        says=("must be a JSON object", "list"),
    ),
    C(
        "dataset-missing-placeholder-column",
        data=jsonl({"id": "a", "question": "1"}, {"id": "b", "question": "2"}, {"id": "c", "q": "3"}),
        file="data.jsonl",
        line=3,
        says=("no column 'question'", "{question}", "prompt 'p'"),
    ),
    C("dataset-empty", data="", file="data.jsonl", says="has no rows"),
    C("dataset-blank-lines-only", data="\n\n  \n", file="data.jsonl", says="has no rows"),
    C(
        "dataset-duplicate-ids",
        data=jsonl({"id": "a", "question": "1"}, {"id": "b", "question": "2"}, {"id": "a", "question": "3"}),
        file="data.jsonl",
        line=3,
        says=("duplicate row", "id 'a'", "line 1"),
    ),
    C(
        "dataset-identical-rows-without-ids",
        data=jsonl({"question": "1"}, {"question": "2"}, {"question": "1"}),
        file="data.jsonl",
        line=3,
        says=("duplicate row", "same content", "line 1", "add an id column"),
    ),
    C(
        "dataset-csv-more-fields-than-header",
        data="id,question\na,1\nb,2,extra\n",
        data_name="data.csv",
        file="data.csv",
        line=3,
        says="more fields than the header",
    ),
    C(
        "dataset-csv-fewer-fields-than-header",
        data="id,question,answer\na,1,2\nb,2\n",
        data_name="data.csv",
        file="data.csv",
        line=3,
        says="fewer fields than the header has (2 of 3)",
    ),
    C(
        "dataset-csv-header-names-a-column-twice",
        data="id,question,question\na,1,2\n",
        data_name="data.csv",
        file="data.csv",
        line=1,
        says="column 'question' more than once",
    ),
    C(
        "dataset-csv-missing-id-value",
        data="id,question\na,1\n,2\n",
        data_name="data.csv",
        file="data.csv",
        line=3,
        says="no value in id column 'id'",
    ),
    C(
        "dataset-id_column-not-in-rows",
        edit=put("dataset.id_column", "key"),
        file="data.jsonl",
        line=1,
        says=("no id column 'key'", "dataset.id_column", "columns here: id, question, answer"),
    ),
    C(
        "dataset-limit-0",
        edit=put("dataset.limit", 0),
        line="limit: 0",
        key="dataset.limit",
        says="greater than or equal to 1",
    ),
    # --- prompts ----------------------------------------------------------------------------
    C(
        "prompt-without-user-message",
        edit=put("prompts", {"p": [{"role": "system", "content": "{question}"}]}),
        line="prompts:",
        key="prompts",
        says="prompt 'p' has no user message",
    ),
    C(
        "prompt-bad-role",
        edit=put("prompts", {"p": [{"role": "bot", "content": "{question}"}]}),
        line="role: bot",
        key="prompts.p[0].role",
        says=("'system', 'developer', 'user', 'assistant' or 'tool'", "'bot'"),
    ),
    C("prompts-empty", edit=put("prompts", {}), line="prompts:", key="prompts", says="must not be empty"),
    C(
        "prompt-bad-name",
        edit=put("prompts", {"my prompt": [{"role": "user", "content": "{question}"}]}),
        line="my prompt:",
        key="prompts.my prompt",
        says="letters, digits",
    ),
    # --- command line -----------------------------------------------------------------------
    C("set-malformed", argv=("--set", "foo"), key="--set 'foo'", says="expected key.path=value"),
    C("set-through-a-list", argv=("--set", "models.name=x"), key="--set models.name", says="models in"),
    C(
        "set-invalid-value",
        argv=("--set", "params.temperature=9"),
        key="params.temperature",
        says=("less than or equal to 2", "(from --set params.temperature=9)"),
    ),
    C(
        "set-unknown-key",
        argv=("--set", "params.temprature=0.5"),
        key="params.temprature",
        says=("did you mean 'temperature'", "--set params.temprature=0.5"),
    ),
    C(
        "max_tokens-boolean",
        edit=put("params.max_tokens", True),
        line="max_tokens: true",
        key="params.max_tokens",
        says="valid integer",
    ),
    C(
        "logprobs-number",
        edit=put("params.logprobs", 1),
        line="logprobs: 1",
        key="params.logprobs",
        says="valid boolean",
    ),
    C("limit-0", argv=("--limit", "0"), file=None, key="--limit", says=("must be at least 1", "evalrun run --help")),
    C(
        "resume-not-a-run",
        mkdir="not-a-run",
        argv=("--resume", "$TMP/not-a-run"),
        file=None,
        key="--resume",
        says=("no manifest.json there", "is it a run directory?"),
    ),
    C(
        "retry-errors-without-resume",
        argv=("--retry-errors",),
        file=None,
        key="--retry-errors",
        says="go with --resume RUN_DIR",
    ),
    # --- the same checks through validate and plan ----------------------------------------
    C(
        "validate-params-temperature-2.5",
        cmd="validate",
        edit=put("params.temperature", 2.5),
        line="temperature: 2.5",
        key="params.temperature",
        says="less than or equal to 2",
    ),
    C(
        "validate-dataset-duplicate-ids",
        cmd="validate",
        data=jsonl({"id": "a", "question": "1"}, {"id": "a", "question": "2"}),
        file="data.jsonl",
        line=2,
        says=("duplicate row", "line 1"),
    ),
    C(
        "validate-yaml-unclosed-bracket",
        cmd="validate",
        raw="experiment: t\nmodels: [a, b\n",
        line=3,
        says="YAML syntax error",
    ),
    C(
        "plan-unknown-grid-axis",
        cmd="plan",
        edit=put("grid", {"temprature": [0, 1]}),
        line="temprature:",
        key="grid.temprature",
        says="did you mean 'temperature'",
    ),
    C(
        "plan-provider-not-defined",
        cmd="plan",
        edit=put("provider", "nosuch"),
        line="provider: nosuch",
        says="provider 'nosuch' is not defined",
    ),
    C(
        "plan-dataset-missing-placeholder",
        cmd="plan",
        data=jsonl({"id": "a", "q": "1"}),
        file="data.jsonl",
        line=1,
        says="no column 'question'",
    ),
    # --- issue 15: hostile input that used to get through --------------------------------
    *[
        C(
            f"header-credential-{name.lower()}",
            edit=put("providers.sim.headers", {name: "sk-literal-0123456789"}),
            line="headers:",
            key="providers.sim.headers",
            says=(f"header {name!r} would put a secret in the config file", "api_key_env"),
        )
        for name in ("Proxy-Authorization", "X-Auth-Token", "Cookie", "Ocp-Apim-Subscription-Key", "X-Custom-Api-Key")
    ],
    C(
        "header-value-bearer-token",
        edit=put("providers.sim.headers", {"X-Gateway": "Bearer sk-abcdef0123456789"}),
        line="headers:",
        key="providers.sim.headers",
        says=("the value is a credential", "api_key_env"),
    ),
    C(
        "header-value-vendor-key",
        edit=put("providers.sim.headers", {"X-Upstream": GOOGLE_LIKE_KEY}),
        line="headers:",
        key="providers.sim.headers",
        says=("the value is a credential", "api_key_env"),
    ),
    C(
        "header-value-newline",
        edit=put("providers.sim.headers", {"X-Trace": "a\nX-Injected: 1"}),
        line="headers:",
        key="providers.sim.headers",
        says="holds a line break",
    ),
    C(
        "header-value-not-latin1",
        edit=put("providers.sim.headers", {"X-Team": "名前"}),
        line="headers:",
        key="providers.sim.headers",
        says="outside Latin-1",
    ),
    C(
        "header-name-with-space",
        edit=put("providers.sim.headers", {"X Trace": "1"}),
        line="headers:",
        key="providers.sim.headers",
        says="not a valid HTTP header name",
    ),
    C(
        "base-url-port-out-of-range",
        edit=put("providers.sim.base_urls", ["http://127.0.0.1:70000/v1"]),
        line="base_urls:",
        key="providers.sim.base_urls",
        says="port must be a number from 1 to 65535",
    ),
    C(
        "base-url-port-zero",
        edit=put("providers.sim.base_urls", ["http://127.0.0.1:0/v1"]),
        line="base_urls:",
        key="providers.sim.base_urls",
        says="port must be a number from 1 to 65535",
    ),
    C(
        "api_key_env-a-google-key",
        edit=put("providers.sim.api_key_env", GOOGLE_LIKE_KEY),
        line="api_key_env:",
        key="providers.sim.api_key_env",
        says=("looks like an API key itself", "NAME of an environment variable"),
    ),
    C(
        "seed-2-to-the-63",
        edit=put("params.seed", 2**63),
        line="seed:",
        key="params.seed",
        says="less than or equal to 9223372036854775807",
    ),
    C("seed-2-to-the-70", edit=put("params.seed", 2**70), line="seed:", key="params.seed", says="less than or equal"),
    C(
        "seed-below-int64",
        edit=put("params.seed", -(2**63) - 1),
        line="seed:",
        key="params.seed",
        says="greater than or equal to -9223372036854775808",
    ),
    C(
        "grid-seed-2-to-the-63",
        edit=put("grid", {"seed": [1, 2**63]}),
        line=str(2**63),
        key="grid.seed[1]",
        says="less than or equal to 9223372036854775807",
    ),
    C(
        "model-seed-2-to-the-64",
        edit=model_params(seed=2**64),
        line="seed:",
        key="models[0].params.seed",
        says="less than or equal",
    ),
    C(
        "top_k-2-to-the-40",
        edit=put("params.top_k", 2**40),
        line="top_k:",
        key="params.top_k",
        says="less than or equal to 2147483647",
    ),
    C("top_k-1e20", edit=put("params.top_k", 1e20), line="top_k:", key="params.top_k", says="valid integer"),
    C(
        "set-seed-2-to-the-70",
        argv=("--set", f"params.seed={2**70}"),
        key="params.seed",
        says=("less than or equal", "from --set"),
    ),
    C(
        "dataset-row-seed-2-to-the-63",
        edit=put("dataset.params_from_columns", {"seed": "s"}),
        data=jsonl({"id": "a", "question": "1", "s": 2**63}),
        file="data.jsonl",
        line=1,
        says="less than or equal",
    ),
    C("rpm-beyond-bound", edit=put("providers.sim.rpm", 10**10), line="rpm:", key="providers.sim.rpm", says="less"),
    C("yaml-alias-bomb-known-key", raw=bomb("params:\n  extra_body:\n", "    "), says="through nested aliases"),
    C("yaml-alias-bomb-unknown-key", raw=bomb("laughs:\n", "  "), says="through nested aliases"),
    C("yaml-5000-levels", raw=MINIMAL + "description: " + "[" * 5000 + "]" * 5000 + "\n", says="deeper than 64"),
    C("yaml-100-levels", raw=MINIMAL + "description: " + "[" * 100 + "]" * 100 + "\n", line=7, says="deeper than 64"),
    C(
        "yaml-recursive-alias",
        raw=MINIMAL + "params:\n  extra_body: &a {self: *a}\n",
        line=8,
        says="refers to the value that contains it",
    ),
    C(
        "set-5000-levels",
        argv=("--set", "description=" + "[" * 5000 + "]" * 5000),
        file=None,
        key="--set description",
        says="deeper than 64",
    ),
    C(
        "run-dir-is-a-file",
        argv=("--run-dir", "$TMP/data.jsonl"),
        file=None,
        key="--run-dir",
        says="is a file, not a folder",
    ),
    C(
        "run-dir-under-a-file",
        argv=("--run-dir", "$TMP/data.jsonl/run"),
        file=None,
        key="--run-dir",
        says=("cannot be created", "data.jsonl is a file, not a folder"),
    ),
    C(
        "run-dir-unwritable",
        argv=("--run-dir", "/proc/evalrun-test/run"),
        file=None,
        key="--run-dir",
        says="cannot be written",
    ),
    C(
        "reports-dir-is-a-file",
        edit=put("reports_dir", "data.jsonl"),
        key="reports_dir",
        says="is a file, not a folder",
    ),
]


# ------------------------------------------------------------------------------ running a case


@dataclass
class Outcome:
    code: int | str | None
    out: str
    err: str
    config: Path
    files: dict[str, Path]  # name → path, for the files a case may name


def run_case(case: Case, tmp_path: Path, base_url: str, capsys: pytest.CaptureFixture[str]) -> Outcome:
    good = tmp_path / "data.jsonl"
    good.write_text(GOOD_ROWS)
    dataset = good
    if case.data is not None:
        dataset = tmp_path / case.data_name
        dataset.write_text(case.data, encoding="utf-8")
    if case.mkdir:
        (tmp_path / case.mkdir).mkdir()
        (tmp_path / case.mkdir / "notes.txt").write_text("not a run\n")
    config = tmp_path / "exp.yaml"
    if case.raw is not None:
        config.write_text(case.raw.replace("$DATA", str(dataset)))
    else:
        cfg = base_config(tmp_path, dataset, base_url)
        if case.edit is not None:
            case.edit(cfg)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    argv = [case.cmd, str(config), *(a.replace("$TMP", str(tmp_path)) for a in case.argv)]
    if case.cmd == "run":
        argv.append("--no-progress")
    # Earlier tests' event loops leave garbage whose collection logs asyncio's "Task was
    # destroyed"; a case that recurses deeply (5,000 levels of YAML) would trigger that
    # collection inside its own capture. Collect first, so the stderr checked is the case's.
    gc.collect()
    capsys.readouterr()
    try:
        code: int | str | None = main(argv)
    except SystemExit as exc:  # argparse rejects a value before evalrun's own code runs
        code = exc.code
    out, err = capsys.readouterr()
    files = {"config": config, case.data_name: dataset, "nope.jsonl": tmp_path / "nope.jsonl"}
    return Outcome(code, out, err, config, files)


def line_of(path: Path, where: int | str) -> int:
    """`where` itself, or the number of the first line of `path` that contains it."""
    if isinstance(where, int):
        return where
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if where in text:
            return n
    raise AssertionError(f"the test's own line marker {where!r} is not in {path}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected_before_any_request(
    case: Case, tmp_path: Path, scripted: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # a relative path the code invents must land in tmp_path
    srv = scripted()
    res = run_case(case, tmp_path, srv.base_url, capsys)
    err = res.err
    context = f"\n--- stderr ---\n{err}--- stdout ---\n{res.out}"

    # 1. exit code 2
    assert res.code == 2, context
    # 3. no traceback anywhere
    assert "Traceback" not in err and "Traceback" not in res.out, context
    # 2. one error, in evalrun's format (argument errors included)
    assert err.startswith("evalrun: error: "), context
    assert err.count("evalrun: error:") == 1, context
    assert "pydantic" not in err.lower() and "errors.pydantic.dev" not in err, context
    if case.file is not None:
        path = res.files[case.file]
        if case.line is not None:
            assert f"{path}:{line_of(path, case.line)}:" in err, context
        else:
            assert str(path) in err, context
    if case.key is not None:
        assert case.key in err, context
    for text in case.says:
        assert text in err, context
    for secret in (GOOGLE_LIKE_KEY, "sk-abcdef0123456789", "sk-literal-0123456789"):  # never repeated back
        assert secret not in err, context
    # 4. nothing sent, nothing written
    assert srv.requests == [], context
    assert not (tmp_path / "reports").exists(), context
    assert not list(tmp_path.rglob("journal.jsonl")), context


# ------------------------------------------------------------------------------ positive control


def test_csv_with_bom_and_id_column_is_read(tmp_path: Path, scripted: Any, cli: Any) -> None:
    """A UTF-8 BOM (as Excel writes it) is not part of the first column's name, and not an error."""
    from evalrun.config.load import load_experiment
    from evalrun.run.grid.datasets import iter_rows
    from evalrun.run.grid.grid import build_plan

    srv = scripted()
    data = tmp_path / "data.csv"
    data.write_bytes("\ufeffid,question\nr1,1 + 1\nr2,2 + 2\n".encode())
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, data, srv.base_url), sort_keys=False))

    res = cli("validate", config)
    assert res.code == 0, res.err
    assert "1 cells × 2 rows" in res.out
    plan = build_plan(load_experiment(config))
    assert plan.dataset.id_column == "id"
    assert plan.dataset.columns == ("id", "question")
    assert [rid for rid, _ in iter_rows(plan.dataset)] == ["r1", "r2"]
    assert srv.requests == []


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


def test_csv_with_a_200_kb_cell_is_read_and_sent(tmp_path: Path, scripted: Any, cli: Any) -> None:
    """The csv module refuses fields over 128 KiB by default; a dataset's long document is legitimate."""
    srv = scripted()
    data = tmp_path / "data.csv"
    long_text = "word " * 40_000  # 200 KB in one cell
    data.write_text(f'id,question\nr1,"{long_text}"\nr2,short\n')
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, data, srv.base_url), sort_keys=False))
    res = cli("validate", config)
    assert res.code == 0, res.err
    res = cli("run", config, "--no-progress")
    assert res.code == 0, res.err
    sent = sorted(len(p["messages"][0]["content"]) for p in srv.requests)
    assert sent[-1] > 200_000 and len(sent) == 2
