"""A child process's own peak RSS and CPU, for the tests and benchmarks that measure them.

`os.wait4` on a child that `subprocess.Popen` started does not give the child's own peak RSS:
Popen starts children with vfork, and at exec Linux keeps the high-water RSS of the memory it
leaves — the *parent's* — as the child's `ru_maxrss` (fs/exec.c: setmax_mm_hiwater_rss). So a
child of a 460 MB pytest process "peaks" at 460 MB whatever it does (measured: `python -c pass`
started by a process holding 600 MB reported 614 MB), and an RSS test fails late in a long suite
only. A small launcher forks the command from its own ~10 MB image, waits for it with wait4 and
hands its rusage back through a pipe; the launcher ends as the command did (same code or signal).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

_LAUNCHER = r"""
import os, signal, sys, time
fd, cmd = int(sys.argv[1]), sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
os.write(fd, f"{pid}\n".encode())
for sig in (signal.SIGINT, signal.SIGTERM):  # passed on: the command decides how it stops
    signal.signal(sig, lambda s, f: os.kill(pid, s))
while True:
    try:
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        break
    except InterruptedError:
        continue
os.write(fd, f"{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime} {wall}\n".encode())
os.close(fd)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


@dataclass
class OwnUsage:
    maxrss_mb: float  # the command's own peak RSS, not its parent's
    user_s: float
    sys_s: float
    wall_s: float  # fork to exit, without the launcher's own start-up


class MeasuredProcess:
    """`subprocess.Popen` of `cmd` behind the launcher; `wait()` → (exit code, OwnUsage).

    Keyword arguments go to Popen (stdout, stderr, cwd, env, …). `pid` is the launcher's (SIGINT
    and SIGTERM sent to it reach the command), `command_pid` the command's (for /proc)."""

    def __init__(self, cmd: list[str], **popen: Any) -> None:
        self._r, w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(w), *cmd], pass_fds=(w,), **popen)
        finally:
            os.close(w)
        self.pid = self.proc.pid
        self._pipe = os.fdopen(self._r, "rb")
        line = self._pipe.readline()  # the launcher has forked
        self.command_pid = int(line) if line.strip() else None

    def wait(self, timeout: float | None = None) -> tuple[int, OwnUsage | None]:
        code = self.proc.wait(timeout)
        with self._pipe as f:
            fields = f.read().split()
        if len(fields) != 4:  # the launcher itself was killed
            return code, None
        rss_kb, user, sys_s, wall = fields
        return code, OwnUsage(int(rss_kb) / 1024, float(user), float(sys_s), float(wall))
