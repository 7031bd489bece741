"""How one journal entry is stored on its line: compact, compressed, checksummed, still one line.

A line is `Z2` + the entry's JSON as one zstd frame (level 1, a fixed preset dictionary, a
checksum), with the bytes that would break line framing escaped (`\\n` → ESC n, `\\r` → ESC r,
for `bytes.splitlines`; ESC → ESC e). Why this shape:

- ~9.5 KB of JSON per request (16 tokens with top-5 logprobs: every token's `bytes` written as
  a list of integers, every key spelled out) becomes ~1.7 KB: logprobs are stored as
  records.Logprobs, one array per field, with `bytes` left out where they are the tokens'
  UTF-8, and a dictionary that holds every column name needs no per-line warm-up. Plain JSON
  under one compressed stream would need the stream's context across lines, and a stream cut
  by kill -9 is not appendable.
- zstd rather than deflate: on the bench workload's lines (4.6 KB of JSON) zstd level 1 takes
  15 µs a line against deflate's 47 µs at the same size (measured), and the journal line is
  written on the event loop for every request.
- One line per entry keeps what made the JSON journal safe: an entry is one write(2); a torn
  last write is a last line without its newline, skipped on reading and cut on resume; a bad
  line is skipped and reported, the rest kept. The frame's checksum catches a damaged line.
- `Z1` lines (deflate against the same dictionary, the journals of the previous evalrun) and
  plain JSON lines (older journals, a line appended by hand) are still read.

The run's keys are masked in the JSON before it is compressed (a compressed key would be
invisible to a byte search, not absent).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import orjson
import zstandard

from evalrun.run.records.logprobs import rows_from_stored

MARK = b"Z2"  # zstd lines; Z1 (deflate) lines are read too
Z1 = b"Z1"
_ESC, _NL = b"\x1b", b"\n"
_LEVEL = 1  # level 3: 3 % smaller lines for 80 % more time (measured on the bench workload)

# Never edit: every Z1 and Z2 line needs exactly this dictionary to be read back. A better one
# takes a new mark (Z3) and keeps this one for reading. Column names in the order `result_rows`
# writes them, the most frequent (logprob arrays, usage) last, where deflate finds them cheapest.
# (Its logprobs are in the packed-array form of the first Z1 journals; the Logprobs form came
# later and reads as well from the rest of the dictionary.)
_TEMPLATE_ROW: dict[str, Any] = {
    "run_id": "",
    "request_id": "",
    "cell_id": "",
    "experiment": "",
    "provider": "",
    "base_url": "http://127.0.0.1:/v1",
    "model": "",
    "prompt_id": "",
    "row_id": "",
    "repeat": 0,
    "messages": '[{"role":"system","content":""},{"role":"user","content":""}]',
    "latency_s": 0.0,
    "started_at": 0,
    "finished_at": 0,
    "attempts": 1,
    "retry_types": None,
    "limiter_wait_s": 0.0,
    **dict.fromkeys(
        [
            "temperature",
            "top_p",
            "top_k",
            "max_tokens",
            "max_completion_tokens",
            "frequency_penalty",
            "presence_penalty",
            "stop",
            "n",
            "reasoning_effort",
            "seed",
            "request_logprobs",
            "top_logprobs",
            "stream",
            "stream_options",
            "response_format",
            "tools",
            "tool_choice",
            "extra_body",
        ]
    ),
    "data_id": "",
    "status": "ok",
    "http_status": 200,
    "response_model": "",
    "response_id": "chatcmpl-",
    "error_type": None,
    "error_message": None,
    "choice_index": 0,
    "n_choices": 1,
    "content": "",
    "finish_reason": "length",
    "tool_calls": None,
    "logprobs": [[" the", -0.1, [[" the", -0.1], [" a", -1.0]]], [" and", -0.2, [[" and", -0.2], [" of", -2.0]]]],
    "ttft_s": None,
    "itl_mean_s": None,
    "itl_p95_s": None,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "prompt_text_tokens": 0,
    "prompt_audio_tokens": 0,
    "prompt_image_tokens": 0,
    "completion_text_tokens": 0,
    "completion_audio_tokens": 0,
    "stream_chunks": None,
}
ZDICT = orjson.dumps(
    {"id": "", "status": "error", "error_type": "", "rows": [{"error_type": "http_5xx", "http_status": 500}]}
) + orjson.dumps({"id": "", "status": "ok", "error_type": None, "rows": [_TEMPLATE_ROW]})


_ZSTD_DICT = zstandard.ZstdCompressionDict(ZDICT, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
# per thread: a compressor keeps state between calls (each call still writes a whole frame)
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(
            level=_LEVEL, dict_data=_ZSTD_DICT, write_checksum=True, write_content_size=False, write_dict_id=False
        )
    return c


def encode(json_line: bytes) -> bytes:
    """A (masked) entry's JSON → its journal line, newline included."""
    data = _compressor().compress(json_line)
    return MARK + data.replace(_ESC, b"\x1be").replace(_NL, b"\x1bn").replace(b"\r", b"\x1br") + _NL


class LineError(ValueError):
    """A line that is not an entry's encoding (damaged, or not written by evalrun)."""


def _unzstd(data: bytes) -> bytes:
    dctx = getattr(_local, "d", None)
    if dctx is None:
        dctx = _local.d = zstandard.ZstdDecompressor(dict_data=_ZSTD_DICT)
    return _whole(dctx.decompressobj(), data, zstandard.ZstdError)


def _inflate(data: bytes) -> bytes:
    return _whole(zlib.decompressobj(15, ZDICT), data, zlib.error)


def _whole(d: Any, data: bytes, error: type[Exception]) -> bytes:
    """`data` as exactly one complete compressed stream (zstd or deflate), else LineError."""
    try:
        text: bytes = d.decompress(data)
    except error as exc:
        raise LineError(f"not a complete compressed entry ({exc})") from None
    if not d.eof or d.unused_data:
        raise LineError("not a complete compressed entry")
    return text


def decode(line: bytes) -> Any:
    """A journal line without its newline → the parsed JSON (logprobs as records.Logprobs), or LineError."""
    if line.startswith((MARK, Z1)):
        # every ESC in an encoded line starts a pair, so the two replaces cannot mis-pair
        data = line[len(MARK) :].replace(b"\x1bn", _NL).replace(b"\x1br", b"\r").replace(b"\x1be", _ESC)
        text = _unzstd(data) if line.startswith(MARK) else _inflate(data)
    else:
        text = line
    try:
        entry = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise LineError("not JSON") from None
    if type(entry) is dict and type(rows := entry.get("rows")) is list:
        rows_from_stored(rows)  # what it cannot read stays, for the writer to null
    return entry
