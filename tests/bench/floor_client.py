"""The floor for bench.py: a bare aiohttp client and nothing else.

One ClientSession, a Semaphore(concurrency), asyncio.gather of one POST per line of BODIES
(each line is a complete JSON request body, the same one evalrun sends), and a json decode of
every response. Plain asyncio event loop, stdlib json: what "a bare aiohttp loop" means.

    python tests/bench/floor_client.py URL BODIES.jsonl CONCURRENCY

Prints "ok=<200 answers> total=<requests>"; exit 1 if any answer was not a 200.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def main(url: str, bodies: list[bytes], concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> int:
            async with sem, session.post(url, data=body, headers=headers) as resp:
                json.loads(await resp.read())
                return resp.status

        statuses = await asyncio.gather(*(one(b) for b in bodies))
    ok = sum(1 for s in statuses if s == 200)
    print(f"ok={ok} total={len(statuses)}")
    return 0 if ok == len(statuses) else 1


def read_bodies(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f if line.strip()]


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], read_bodies(sys.argv[2]), int(sys.argv[3]))))
