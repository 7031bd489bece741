"""The journal's compact line framing (run/store/framing.py): lossless round trips, the bytes that
would break a line, and — over real HTTP — a damaged compressed line or a torn one skipped,
reported and re-sent by --resume, with every request ending as exactly one row."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, read_results, write_config

from evalrun.run.records.coerce import Notes
from evalrun.run.records.coerce import logprobs as flatten
from evalrun.run.store.framing import MARK, LineError, decode, encode
from evalrun.run.store.journal import JOURNAL, journal_state, read_journal


def _tok(token: str, logprob: float, raw: Any = "utf8", tops: Any = ()) -> dict[str, Any]:
    t: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode()) if raw == "utf8" else raw}
    if tops != "none":
        t["top_logprobs"] = list(tops)
    return t


ROUND_TRIPS = {
    "usual": [_tok(" the", -0.1, tops=[_tok(" the", -0.1), _tok(" a", -2.5)])],
    "bytes that are not the token's UTF-8 (a cut multi-byte character)": [
        _tok("\ufffd", -1.0, raw=[226, 130], tops=[_tok("\ufffd", -1.0, raw=[226])])
    ],
    "bytes null": [_tok("x", -0.5, raw=None, tops=[_tok("y", -0.7, raw=None)])],
    "top_logprobs null": [{"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": None}],
    "an extra key (not a column: not kept)": [{**_tok("x", -0.5), "extra": 1}],
    "no top_logprobs key": [_tok("x", -0.5, tops="none")],
    "newlines, CR, ESC and NUL in tokens": [_tok("\n\r\x1b\x00", -3.0, tops=[_tok("\n", -3.0), _tok("\x1bn", -4.0)])],
    "empty list": [],
}


def _lp(entries: list[Any]) -> Any:
    lp = flatten(entries, "logprobs", Notes())
    assert lp is not None
    return lp


@pytest.mark.parametrize("logprobs", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_an_entry_reads_back_exactly_as_written(logprobs: list[Any]) -> None:
    entry = {"id": "r1", "status": "ok", "error_type": None, "rows": [{"content": "a\nb", "logprobs": _lp(logprobs)}]}
    line = encode(orjson.dumps(entry))
    assert line.startswith(MARK) and line.endswith(b"\n")
    assert line.count(b"\n") == 1 and b"\r" not in line  # one line for `for line in f` and splitlines()
    assert decode(line[:-1]) == entry


def _packed(t: dict[str, Any]) -> list[Any]:
    """A token object as the first Z1 journals stored it: [token, logprob, tops(, bytes)]."""
    own = [] if t.get("bytes") == list(t["token"].encode()) else [t.get("bytes")]
    tops = t.get("top_logprobs")
    if type(tops) is list:
        tops = [
            [x["token"], x["logprob"], *([] if x.get("bytes") == list(x["token"].encode()) else [x.get("bytes")])]
            for x in tops
        ]
    return [t["token"], t["logprob"], tops, *own]


@pytest.mark.parametrize(
    "logprobs", [v for k, v in ROUND_TRIPS.items() if "extra" not in k and "no top" not in k], ids=str
)
def test_lines_of_the_first_compact_journals_read_as_logprobs(logprobs: list[Any]) -> None:
    old = {"id": "r1", "status": "ok", "error_type": None, "rows": [{"logprobs": [_packed(t) for t in logprobs]}]}
    assert decode(encode(orjson.dumps(old))[:-1])["rows"][0]["logprobs"] == _lp(logprobs)


def test_every_incompressible_payload_stays_on_one_line() -> None:
    """Random bytes in the JSON: deflate output then holds every byte value, \\n and ESC included."""
    import random

    rng = random.Random(3)
    for _ in range(200):
        text = orjson.dumps(
            {"id": "r", "status": "ok", "error_type": None, "rows": [{"content": rng.randbytes(300).hex()}]}
        )
        line = encode(text)
        assert line.count(b"\n") == 1 and b"\r" not in line
        assert orjson.dumps(decode(line[:-1])) == text


DAMAGED = {
    "a flipped byte (Adler-32)": lambda line: line[:10] + bytes([line[10] ^ 0x55]) + line[11:],
    "cut short": lambda line: line[: len(line) // 2],
    "mark without data": lambda line: MARK,
    "trailing bytes after the stream": lambda line: line + b"xyz",
}


@pytest.mark.parametrize("damage", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_line_is_refused(damage: Any) -> None:
    line = encode(orjson.dumps({"id": "r1", "status": "ok", "error_type": None, "rows": [{"content": "x" * 200}]}))
    with pytest.raises(LineError):
        decode(damage(line[:-1]))


def _z1_line(entry: dict[str, Any]) -> bytes:
    """A line as the previous evalrun wrote it: deflate against the same dictionary (Z1)."""
    from evalrun.run.store.framing import ZDICT

    c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT)
    data = c.compress(orjson.dumps(entry)) + c.flush()
    return b"Z1" + data.replace(b"\x1b", b"\x1be").replace(b"\n", b"\x1bn").replace(b"\r", b"\x1br")


def test_deflate_lines_of_the_previous_journal_are_read_and_their_damage_caught() -> None:
    entry = {"id": "r1", "status": "ok", "error_type": None, "rows": [{"content": "a\nb\x1b", "n": 1}]}
    line = _z1_line(entry)
    assert decode(line) == entry
    with pytest.raises(LineError):
        decode(line[:10] + bytes([line[10] ^ 0x55]) + line[11:])


def test_plain_json_lines_of_an_older_journal_are_read(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL
    plain = {"id": "old", "status": "ok", "error_type": None, "rows": [{"logprobs": ROUND_TRIPS["usual"]}]}
    new = {"id": "new", "status": "error", "error_type": "timeout", "rows": [{"content": None}]}
    path.write_bytes(orjson.dumps(plain) + b"\n" + encode(orjson.dumps(new)))
    as_read = {**plain, "rows": [{"logprobs": _lp(ROUND_TRIPS["usual"])}]}
    assert list(read_journal(path)) == [as_read, new]


def test_bench_workload_is_under_2_kb_per_request() -> None:
    """16 tokens with top-5 logprobs and a full row: the issue's budget (≈9.5 KB as plain JSON)."""
    words = [" note", " short", " answer", " simple", " direct", " term"]
    lps = [
        _tok(
            words[i % 6], -0.1 * i, tops=[_tok(words[(i + k) % 6], -0.1 * i - 0.7 * k - 0.0123456789) for k in range(5)]
        )
        for i in range(16)
    ]
    row = {
        "run_id": "20261201T220117Z-fb25",
        "messages": '[{"role":"user","content":"Write a note."}]',
        "logprobs": lps,
    }
    text = orjson.dumps(
        {"id": "adb218d1e4e3adb7", "status": "ok", "error_type": None, "rows": [{**row, "logprobs": _lp(lps)}]}
    )
    assert len(encode(text)) < 2048 < len(orjson.dumps({"rows": [row]}))


def _finished_run(tmp_path: Path, dataset: Path, scripted: Any, cli: Any) -> tuple[Any, Path]:
    srv = scripted()
    config = write_config(tmp_path, base_config(tmp_path, dataset, srv.base_url))
    r = cli("run", config, "--no-progress")
    assert r.code == 0, r.err
    assert len(srv.requests) == 5
    return srv, r.run_dir


def test_a_damaged_compressed_line_is_skipped_named_and_its_request_sent_again(
    tmp_path, dataset, scripted, cli
) -> None:
    srv, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    journal = run_dir / JOURNAL
    lines = journal.read_bytes().split(b"\n")[:-1]
    assert all(line.startswith(MARK) for line in lines)
    victim = decode(lines[2])["id"]
    lines[2] = lines[2][:30] + bytes([lines[2][30] ^ 0xFF]) + lines[2][31:]
    journal.write_bytes(b"\n".join(lines) + b"\n")
    assert victim not in journal_state(journal)
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 0, r.err
    assert "line 3: not a complete compressed entry" in r.err
    assert len(srv.requests) == 6  # only the request whose line was damaged went out again
    df = read_results(run_dir)
    assert len(df) == 5 and df.request_id.is_unique and victim in set(df.request_id)


def test_a_torn_compressed_last_line_is_cut_and_its_request_sent_again(tmp_path, dataset, scripted, cli) -> None:
    srv, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    journal = run_dir / JOURNAL
    data = journal.read_bytes()
    last = data[:-1].rsplit(b"\n", 1)[1]
    journal.write_bytes(data[: len(data) - len(last) // 2 - 1])  # kill -9 partway through the last write(2)
    assert len(journal_state(journal)) == 4
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 0, r.err
    assert len(srv.requests) == 6
    data = journal.read_bytes()
    assert data.endswith(b"\n") and len(list(read_journal(journal))) == 5  # 4 whole lines + the request sent again
    assert all(decode(line) for line in data.splitlines())
    assert len(read_results(run_dir)) == 5


def test_zlib_dictionary_is_what_older_lines_need() -> None:
    """ZDICT is part of the format: a line written today must inflate with it forever."""
    from evalrun.run.store.framing import ZDICT

    assert zlib.crc32(ZDICT) == ZDICT_CRC, "ZDICT changed: old journals could not be read; add a new MARK instead"


ZDICT_CRC = 3366250783
