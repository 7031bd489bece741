"""The adaptive rate of one lane: what 429s teach when nobody told evalrun the server's limit.

Every answer is attributed to the moment its request was *sent* (a `Send` in the lane's ledger),
never to when the answer arrived. Real gateways reject in microseconds and answer in seconds, so
by arrival time the rejections of a burst come back before its accepted requests do, and an
accepted rate measured by arrival looks tiny (issue 24: 54 rpm learnt against a 600-rpm server).

* Window full, without headers: the last WINDOW_RUN sends before this one, in *send* order, were
  all rejected (a request still in flight breaks the run: with sporadic 429s answered at once,
  the accepted requests around them are still on the wire), and at least WINDOW_SHARE of the
  answered sends of the span were. Once a limit is learnt, any 429 to a request sent at or
  above the ceiling says the ceiling is too high (a failed probe); the lane is not blocked for it.
* Accepted rate: the sends of the last `span` before the rejected one that were not rejected
  (answered 200, or still on the wire: rejections come back no later than acceptances), over
  `span` = max(Retry-After, or else the longest recent latency, MIN_EPISODE_S). Nothing accepted there
  means the window is still full from before: the block waits it out, and the rate stays.
* Decrease, at most once per pace: a window-full 429 answering a request sent before the last
  change of pace says nothing about the new pace. The known-good `ceiling` becomes the accepted
  rate (or DECREASE × the pace in force, if that was lower: the pace itself was too fast), and
  the rate DECREASE × the ceiling.
* Recovery, per clean episode (the requests sent in the first max(Retry-After, MIN_EPISODE_S)
  at the new pace all answered, and one sent after that answered 200, with no decrease — judged
  by send time, so a 2-s latency cannot pass a probe before its 429s are back): multiplicative (× RECOVER) up to the ceiling — back there in one
  or two episodes; then, after `hold` clean episodes at it, probes above it by a step that
  doubles per clean probe (INCREASE, 2×, 4×… of the ceiling, capped at MAX_STEP): an
  underestimate of 5× is made up in about eight episodes. A clean probe becomes the new ceiling;
  a failed one goes back to the ceiling and doubles `hold` (up to PROBE_AFTER), so a ceiling
  that holds is probed less and less often — no repeated 429 storms — yet a server that raises
  its limit is followed within PROBE_AFTER + a few episodes. An episode holds at least
  EPISODE_REQUESTS requests, and one in which the lane sent well below its pace (held back by
  its concurrency, or out of requests) proves nothing: it raises nothing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

DECREASE = 0.9  # the rate after a decrease, as a fraction of the known-good ceiling
RECOVER = 2.0  # multiplicative step back toward the ceiling, per clean episode
INCREASE = 0.05  # the first probe step above the ceiling, as a fraction of it; doubles per clean probe
MAX_STEP = 1.0
PROBE_AFTER = 16  # the most clean episodes at the ceiling before probing again (after failed probes)
MIN_EPISODE_S = 1.0  # shortest episode, and the shortest span an accepted rate is measured over
WINDOW_RUN = 6  # 429s in a row, in send order, before "window full" without headers
WINDOW_SHARE = 0.5  # share of 429s among the span's answered sends that means "window full"
MAX_WINDOW_S = 120.0  # the longest server window evalrun will infer
# a 429 at the learnt ceiling says "too high" only if the server was taking about the ceiling's
# worth then: one while the lane got far less through is a sporadic 429 (upstream overload), and
# read as "too high" each of them lowered the ceiling to what got through — under a window with
# 15 % sporadic 429s the pace fell to 23 rpm for 600 (527 s for ~40 s of work)
SOFT_SHARE = 0.9
# an episode holds at least this many requests: at 60 rpm a 1-s episode holds one, and probes
# passed clean before their 429s could show — probed up to 352 rpm for 60 (263 late 429s of
# 100); more would be surer but slows recovery from a low guess (2 → 10/s: 10 s at 2, 16 s at 5)
SOFT_COUNT = 5
EPISODE_REQUESTS = 2
MIN_RATE = 1.0 / 60  # the adaptive rate never falls below 1 request a minute
SENDS_KEPT = 4096  # sends remembered per lane (bounded memory)
LATENCIES_KEPT = 64


@dataclass(slots=True)
class Send:
    """One request put on the wire, in the lane's ledger. Mutable on purpose: its answer (None
    while in flight, then rejected or not) is filled in when it comes."""

    at: float
    rejected: bool | None = None


class AdaptiveRate:
    """The ledger of sends and the AIMD state of one lane (requests per second; None: not learnt)."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.ceiling: float | None = None  # the highest rate known to pass
        self.source = "429s"  # what taught `rate`: "429s" or "the last run"
        self.decreases = 0
        self.scale = 1  # processes sharing the budget (shared_limiter.py): the ledger is one of them
        self.changed_at = -float("inf")  # sends before this went at an older pace
        self.decreased_at = -float("inf")
        self.next_increase = 0.0
        self._step = INCREASE
        self._hold = 1
        self._hold_left = 1
        # the longest window the server has shown: the longest Retry-After of a full window, or
        # how long a full window went on rejecting (the first 429 of an episode → the last one,
        # by send time). A Retry-After longer than the real window (5 s over 1 s) makes the
        # rate learnt lower than the server's — honouring it is slower anyway.
        self.window_s = 0.0
        self._episode: tuple[float, float] | None = None  # (first, last) window-full 429s by send time
        self._sends: collections.deque[Send] = collections.deque(maxlen=SENDS_KEPT)
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCIES_KEPT)

    def start_from(self, rate: float, source: str) -> None:
        """Begin at a rate learnt earlier (a resumed run's manifest): known good until a 429 says not."""
        self.rate = self.ceiling = max(MIN_RATE, rate)
        self.source = source

    def sent(self, now: float) -> Send:
        send = Send(now)
        self._sends.append(send)
        return send

    def latency(self) -> float:
        """The longest recent latency (how long an answer can lag its send)."""
        return max(self._latencies, default=0.0)

    def answered(self, send: Send, rejected: bool, latency_s: float | None) -> None:
        send.rejected = rejected
        if latency_s is not None:
            self._latencies.append(latency_s)

    def probing(self) -> bool:
        return self.rate is not None and self.ceiling is not None and self.rate > self.ceiling

    def over_ceiling(self, send: Send) -> bool:
        """Whether a 429 answers a request sent at or above the learnt ceiling while the server
        was taking about the ceiling's worth: then it says the ceiling is too high (a failed
        probe, or a ceiling a lucky probe set a hair too high — on a fixed window that shows as
        one 429 at each window's end, never a run of them)."""
        return (
            self.rate is not None
            and self.ceiling is not None
            and self.rate >= self.ceiling
            and send.at > self.changed_at
            and self.accepted(send, self.span(None)) >= SOFT_SHARE * self.ceiling
        )

    def full_window(self, send: Send, span: float) -> bool:
        """Whether a 429 without headers means the window is full (see the module doc)."""
        n = n429 = run = 0
        counting_run = True
        for s in reversed(self._sends):
            if s.at > send.at:
                continue
            if s.at < send.at - span:
                break
            if s.rejected is not None:
                n += 1
                n429 += s.rejected
            if counting_run:
                if s.rejected:
                    run += 1
                else:
                    counting_run = False
        return run >= WINDOW_RUN and n429 >= WINDOW_SHARE * n

    def accepted(self, send: Send, span: float) -> float:
        """Requests per second the server accepted over the span before `send` (by send time)."""
        ok = sum(1 for s in self._sends if send.at - span < s.at <= send.at and not s.rejected)
        return ok / span * self.scale

    def span(self, retry_after: float | None) -> float:
        """How far back a 429 is judged: its Retry-After, else the longest recent latency
        (answers lag their sends by that much), at least MIN_EPISODE_S."""
        return max(retry_after if retry_after is not None else self.latency(), MIN_EPISODE_S)

    def _memory(self) -> float:
        """How long the server remembers a pace: a window longer than an episode (10 s, 60 s)
        still holds what the old pace sent for that long after a change."""
        return self.window_s if self.window_s > MIN_EPISODE_S else 0.0

    def _window_seen(self, send: Send, retry_after: float | None) -> None:
        """A window-full 429 answering `send`: the window lasts at least its Retry-After, and
        the episode it belongs to goes on at least till then."""
        if retry_after is not None:
            self.window_s = min(MAX_WINDOW_S, max(self.window_s, retry_after))
        first = send.at if self._episode is None else self._episode[0]
        self._episode = (first, max(send.at, self._episode[1] if self._episode else send.at))

    def _episode_over(self, send: Send) -> None:
        """An accepted send after an episode's first 429: the window was full from the first
        429 to the last one (a probe interval more at most: the lane blocks MIN_EPISODE_S at
        a time while it knows nothing better)."""
        if self._episode is None or send.at <= self._episode[0]:
            return
        first, last = self._episode
        self._episode = None
        shown = min(send.at, last + MIN_EPISODE_S) - first
        self.window_s = min(MAX_WINDOW_S, max(self.window_s, shown))

    def block_s(self, now: float, retry_after: float | None) -> float:
        """How long a full window is waited out: the server's Retry-After, else the longest
        window it has shown (at least MIN_EPISODE_S) — and, after a decrease, until a window
        longer than an episode no longer holds the old pace (a gateway answering every 429
        with Retry-After: 1 over a 10-s window would otherwise be asked again every second)."""
        wait = retry_after if retry_after is not None else max(MIN_EPISODE_S, self.window_s)
        return max(wait, self.decreased_at + self._memory() - now)

    def on_full(self, now: float, send: Send, retry_after: float | None, pace: float | None) -> bool:
        """A window-full 429 answering `send`, `pace` the rate in force; True if the rate decreased."""
        self._window_seen(send, retry_after)
        if send.at <= max(self.changed_at, self.decreased_at + self._memory()):
            return False  # sent at an older pace, or while the window still held a faster one
        # the accepted rate over the whole window, once its length is known: a 10-s window
        # measured over 1 s looks ten times as generous as it is
        accepted = self.accepted(send, max(self.span(retry_after), self.window_s))
        if accepted <= 0:
            return False  # nothing got through: the window is still full from before
        if self.probing():
            assert self.rate is not None and self.ceiling is not None
            # the probe failed: back to the last rate that passed (not to what the probe got
            # through: on a fixed window that over-counts, and the ceiling would creep up by a
            # probe step each time), and probe less often
            self.rate = self.ceiling
            self._hold = min(PROBE_AFTER, self._hold * 2)
        else:
            self.ceiling = max(MIN_RATE, accepted if pace is None or accepted < pace else pace * DECREASE)
            self.rate = max(MIN_RATE, self.ceiling * DECREASE)
            self._hold = 1
        self.source = "429s"
        self._hold_left = self._hold
        self._step = INCREASE
        self.decreases += 1
        self.changed_at = self.decreased_at = now
        self.next_increase = now + max(retry_after or 0.0, MIN_EPISODE_S, self.window_s)
        return True

    def _unanswered(self) -> bool:
        """Whether a request sent within the episode still waits for its answer (it may be a 429)."""
        for s in reversed(self._sends):
            if s.at < self.changed_at:
                return False
            if s.at < self.next_increase and s.rejected is None:
                return True
        return False

    def _episode_s(self) -> float:
        """How long a pace is tried before it is judged clean: a window (over a 10-s window, a
        pace too fast shows only after 10 s), and long enough to hold EPISODE_REQUESTS."""
        per_request = 1.0 / self.rate if self.rate else 0.0
        return max(MIN_EPISODE_S, self.window_s, EPISODE_REQUESTS * per_request)

    def _pace_used(self, since: float, now: float) -> bool:
        """Whether the lane sent at about its pace since `since`. One held back by its
        concurrency, by retries waiting or by running out of requests ("application-limited",
        RFC 7661) passes every probe without testing it: a 60-rpm server at concurrency 4 had
        its ceiling probed up to 352 rpm by such clean episodes, each failure a 429 storm."""
        span = now - since
        if self.rate is None or span <= 0:
            return False
        n = 0
        for s in reversed(self._sends):
            if s.at <= since:
                break
            n += 1
        return n / span * self.scale >= SOFT_SHARE * self.rate

    def on_success(self, now: float, send: Send) -> bool:
        """A 200; True when it ended a clean episode and the rate rose."""
        self._episode_over(send)
        # the episode is judged by send time: only an answer to a request sent after it ended
        # says it was clean (the 429s of requests sent within it come back no later, whatever
        # the latency); judged by arrival, a probe passed before its 429s came back
        if self.rate is None or self.ceiling is None or send.at < self.next_increase or self._unanswered():
            return False
        since = max(self.changed_at, now - self._episode_s())  # the episode just judged
        # an episode lasts a window: over a 10-s window, a pace too fast shows only after 10 s
        self.next_increase = now + self._episode_s()
        if self.rate >= self.ceiling and not self._pace_used(since, now):
            return False  # a clean episode at a pace the lane never reached proves nothing
        if self.rate < self.ceiling:
            self.rate = min(self.ceiling, self.rate * RECOVER)
        elif self.probing():  # a clean probe: it is the new ceiling, and the next step is bigger
            self.ceiling = self.rate
            self._step = min(MAX_STEP, self._step * 2)
            self.rate = self.ceiling * (1 + self._step)
        elif self._hold_left > 0:
            self._hold_left -= 1
            return False
        else:
            self.rate = self.ceiling * (1 + self._step)
        self.changed_at = now
        return True
