"""`evalrun …` with the CPU it has used when its first HTTP request goes out (issue 23).

    python tests/bench/startup_probe.py run experiment.yaml --no-progress --run-dir DIR

Wraps aiohttp's ClientSession._request (evalrun sends everything through one session) so that
its first call prints `bench: first request at cpu <s> s` (user+sys of this process, so far)
and, with BENCH_MODULES=1, the top-level packages imported by then. evalrun itself is not changed.
"""

from __future__ import annotations

import os
import sys
import time

import aiohttp

_request = aiohttp.ClientSession._request
_seen = False


async def _first(self: aiohttp.ClientSession, *args: object, **kwargs: object) -> aiohttp.ClientResponse:
    global _seen
    if not _seen:
        _seen = True
        print(f"bench: first request at cpu {time.process_time():.4f} s", file=sys.stderr)
        if os.environ.get("BENCH_MODULES"):
            top = sorted({m.split(".")[0] for m in sys.modules})
            print("bench: imported by then: " + " ".join(top), file=sys.stderr)
    return await _request(self, *args, **kwargs)  # type: ignore[arg-type]


aiohttp.ClientSession._request = _first  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    from evalrun.cli import main

    sys.exit(main(sys.argv[1:]))
