"""`evalrun models`: what a provider's server says it serves (`GET {base_url}/models`).

The server's list is the truth a preset's catalog can lag behind; many OpenAI-compatible
servers have no list at all (404), which is an answer too, not a failure. The key goes only
in the Authorization header: every text this module returns is masked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from evalrun.config.diagnostics import did_you_mean
from evalrun.config.models import PRESETS, ProviderConfig
from evalrun.config.proxy import proxy_for
from evalrun.errors import ConfigError, EvalrunError
from evalrun.run.records.secrets import mask, use_keys

MAX_LIST_BYTES = 16 * 1024 * 1024  # a catalog of thousands of models is well under this
LIST_TIMEOUT_S = 30.0  # one small GET: a provider's timeout_s (for long generations) would be too patient


class ListingError(EvalrunError):
    """No base URL of the provider answered the model list (unreachable, refused key, 5xx)."""


@dataclass(frozen=True, slots=True)
class ModelList:
    """What a server answered at GET /models: its model ids, or None when it has no list (404)."""

    url: str
    ids: tuple[str, ...] | None


def list_models(name: str, provider: ProviderConfig, key: str | None) -> ModelList:
    """Ask provider `name` for its models (the embedded simulator is started for the question)."""
    use_keys([key] if key else [])  # masked in every error text below
    return asyncio.run(_list(name, provider, key))


async def _list(name: str, provider: ProviderConfig, key: str | None) -> ModelList:
    if provider.kind != "simulator":
        return await _ask(name, provider, provider.base_urls, key)
    from evalrun.sim import SimOptions, start_simulator

    sim = await start_simulator(SimOptions.from_mapping(provider.simulator))
    try:
        return await _ask(name, provider, [sim.base_url], key)
    finally:
        await sim.close()


async def _ask(name: str, provider: ProviderConfig, urls: list[str], key: str | None) -> ModelList:
    """The first base URL that answers, in order (the run's fallback order); a 401/403 stops:
    every URL would refuse the same key."""
    headers = {"Accept": "application/json", **provider.headers}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT_S, sock_connect=provider.connect_timeout_s)
    failures: list[str] = []
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        for base in urls:
            url = f"{base}/models"
            try:
                async with session.get(url, headers=headers, proxy=proxy_for(url), allow_redirects=False) as resp:
                    body = await resp.content.read(MAX_LIST_BYTES + 1)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{url}: {mask(str(exc) or type(exc).__name__)}")
                continue
            if status == 200:
                return ModelList(url, _ids(url, body))
            if status == 404:
                return ModelList(url, None)
            failures.append(f"{url}: HTTP {status}: {mask(_message(body))}")
            if status in (401, 403):
                env = (
                    f" (the key from {provider.api_key_env})"
                    if provider.api_key_env
                    else " (no api_key_env: no key sent)"
                )
                raise ListingError(f"provider {name!r} refused the request{env}: {failures[-1]}")
    raise ListingError(f"provider {name!r}: no base URL answered the model list: {'; '.join(failures)}")


def _ids(url: str, body: bytes) -> tuple[str, ...]:
    """The `id`s of an OpenAI-style list `{"data": [{"id": …}, …]}`."""
    try:
        if len(body) > MAX_LIST_BYTES:
            raise ValueError
        data = orjson.loads(body).get("data")
        ids = tuple(m["id"] for m in data)
        if not all(isinstance(i, str) for i in ids):
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ListingError(f"{url}: the answer is not an OpenAI model list ({{'data': [{{'id': …}}]}})") from None
    return ids


def _message(body: bytes) -> str:
    """A server's error text: the envelope's message, else the start of the body."""
    try:
        text = str(orjson.loads(body)["error"]["message"])
    except (ValueError, TypeError, KeyError):
        text = body[:200].decode("utf-8", "replace")
    return text[:500]


def find_provider(name: str, config: Path | None, overrides: list[str]) -> tuple[ProviderConfig, str]:
    """Provider `name` of the experiment file `config`, else the preset of that name; with
    where its api_key_env is written (the start of a missing key's error)."""
    from evalrun.config.load import load_experiment

    presets = ", ".join(PRESETS)
    if config is None:
        if name not in PRESETS:
            raise ConfigError(
                f"provider {name!r} is not a preset ({presets}){did_you_mean(name, PRESETS) or '.'} For a provider "
                f"of your own, name the experiment file that defines it: evalrun models {name} --config FILE"
            )
        return ProviderConfig.model_validate(PRESETS[name]), f"the {name} preset"
    exp = load_experiment(config, overrides, check_models=False)
    if name in exp.providers:
        key_path = ("providers", name, "api_key_env")
        return exp.providers[name], exp.where(*key_path if key_path in exp.lines else key_path[:2])
    if name in PRESETS:
        return ProviderConfig.model_validate(PRESETS[name]), f"the {name} preset"
    known = [*exp.providers, *(p for p in PRESETS if p not in exp.providers)]
    raise ConfigError(
        f"{exp.where('providers')}: provider {name!r} is not defined{did_you_mean(name, known)}; "
        f"defined here or as a preset: {', '.join(known)}"
    )
