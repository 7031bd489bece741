"""The run's API keys: checked where they are read, and masked in everything written.

A server may echo the request's `Authorization` value anywhere in its answer — the content,
a tool call's arguments, the response id, a streamed chunk, an error, an oversized header.
So the journal line, the manifest and every log line pass through `mask`, not only error
text (`journal.Journal.append`, `store.write_json`, `logs.REDACT`). Error text is masked
before it is cut to its length limit, so no piece of a key survives the cut.

The keys of the current run are process-wide (one run per process; a test runs many, one
after the other): `use_keys` replaces them at the start of each run.
"""

from __future__ import annotations

import os

import orjson

from evalrun.errors import ConfigError
from evalrun.logs import REDACT

MASK = "***"
MIN_KEY_CHARS = 8  # a shorter "key" would mask ordinary text (a test's "k"); real keys are far longer

_keys: tuple[str, ...] = ()
_key_bytes: tuple[bytes, ...] = ()


def use_keys(keys: list[str]) -> None:
    """The keys of the run about to start: from now on, masked wherever they would be written."""
    global _keys, _key_bytes
    found = sorted({k for k in keys if len(k) >= MIN_KEY_CHARS}, key=len, reverse=True)  # longest first
    _keys = tuple(found)
    forms: set[bytes] = set()
    for k in found:
        forms.add(k.encode())
        forms.add(orjson.dumps(k)[1:-1])  # as it reads inside JSON text (a key with " or \ escaped)
    _key_bytes = tuple(sorted(forms, key=len, reverse=True))
    REDACT.secrets = set(found)


def mask(text: str) -> str:
    """`text` with every key of the run replaced by ***."""
    for k in _keys:
        if k in text:
            text = text.replace(k, MASK)
    return text


def mask_bytes(data: bytes) -> bytes:
    """Serialized JSON (a journal line, the manifest) with every key of the run replaced by ***."""
    for k in _key_bytes:
        if k in data:
            data = data.replace(k, MASK.encode())
    return data


def checked_key(env: str, value: str | None, where: str) -> str | None:
    """The key read from environment variable `env`: surrounding whitespace (a trailing CR/LF
    from a Windows-edited .env file) is stripped; a key that still cannot travel in an HTTP
    header is refused with one line that names the variable, never the key."""
    if value is None:
        return None
    key = value.strip()
    if not key:
        return None
    bad = next((c for c in key if ord(c) < 33 or ord(c) == 127), None)
    if bad is not None:
        what = "a line break" if bad in "\r\n" else "a space" if bad == " " else "a control character"
        raise ConfigError(
            f"{where}: the environment variable {env} holds {what} inside the key; "
            f"set it to the key alone (export {env}=<your key>)"
        )
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{where}: the environment variable {env} holds characters that cannot travel in an HTTP "
            "header (outside Latin-1); check that it holds the key alone"
        ) from None
    return key


def provider_key(name: str, env: str, where: str) -> str:
    """Provider `name`'s key from its environment variable `env`; unset is a usage error whose
    message (`where` first: the file and line) names the variable, never a key."""
    value = checked_key(env, os.environ.get(env), f"{where}: providers.{name}.api_key_env")
    if not value:
        raise ConfigError(
            f"{where}: providers.{name}.api_key_env: the environment variable {env} is not set; "
            f"export {env}=<your key> (or try the config on the simulator: --set provider=simulator)"
        )
    return value
