"""How fast one host is driven: a host-wide pause and a fixed or adaptive rate (:class:`HostRate`)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping

from aiolimiter import AsyncLimiter

from migrator.http.limits import UNLIMITED, HostLimits
from migrator.http.retry import PAUSING_STATUSES, parse_retry_after

__all__ = ["HOLD", "HostRate"]

log = logging.getLogger("migrator.http")

HOLD = 0.9  # adaptive: share of the last rate that met a 429 to settle at


class HostRate:
    """The pause and rate gates of one host, fed with every status the host answers.

    **Host pause** -- ``paused_until`` is set from a 429/503 ``Retry-After`` (delta-seconds or
    HTTP-date, capped at ``retry_after_max``). It applies to the whole host: every attempt waits
    it out, and one that was already queued re-checks it after the limiter lets it go.

    **Fixed rate** -- a leaky bucket (:class:`aiolimiter.AsyncLimiter`) of capacity ``burst / 2``
    that drains at ``rate`` per second. A configured rate the server keeps refusing is too high:
    ease off 20% per second of 429s, then return towards it (+5% per clean 2 s).

    **Adaptive rate** (``limits.rate`` is None: the limit is unknown), AIMD style like TCP
    congestion control: start at ``adaptive_start`` and double each clean half second until the
    first 429 (slow start); a 429 then halves the rate (at most once per second, and only for
    requests started since the last cut, so one burst of 429s counts once; never below
    ``adaptive_min``) and later ones cut it by 10%; clean half seconds in which the rate was
    actually used climb +10% to just under the remembered ceiling, hold there, and probe 2%
    higher every 30 s (never above ``adaptive_max``).

    **Unlimited** (``rate="unlimited"``): ``limiter`` is None; a 429 switches to adapting.

    A rate change swaps in a new, full bucket: no burst right after a change, and attempts queued
    on the old bucket queue again on the new one once released.
    """

    __slots__ = (
        "name", "limits", "paused_until", "adaptive", "limiter", "rate", "configured",
        "_slow_start", "_ceiling", "_at_ceiling_since", "_last_cut", "_window_start", "_window_ok",
    )  # fmt: skip

    def __init__(self, limits: HostLimits, name: str) -> None:
        self.name = name
        self.limits = limits
        self.paused_until = 0.0  # loop.time() before which nothing is sent to this host
        self.adaptive = limits.rate is None
        self._slow_start = True
        self.limiter: AsyncLimiter | None = None  # None: no rate limit (an "unlimited" host)
        if limits.rate == UNLIMITED:
            self.rate = self.configured = math.inf
        else:
            self.rate = limits.adaptive_start if self.adaptive else float(limits.rate)  # type: ignore[arg-type]
            self.configured = math.inf if self.adaptive else self.rate
            self.limiter = self._new_limiter(self.rate)
        self._ceiling: float | None = None  # adaptive: the rate at which the server last said 429
        self._at_ceiling_since = 0.0
        # AIMD bookkeeping (loop.time() values)
        self._last_cut = -math.inf
        self._window_start = 0.0
        self._window_ok = 0

    @property
    def mode(self) -> str:
        return "adaptive" if self.adaptive else "unlimited" if self.limiter is None else "fixed"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._window_start = loop.time()

    async def gate(self, loop: asyncio.AbstractEventLoop) -> float:
        """Wait out the host pause and the rate limiter; return seconds waited."""
        start = loop.time()
        while True:
            pause = self.paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            limiter = self.limiter
            if limiter is None:
                return loop.time() - start  # no rate limit: only the pause holds requests
            await limiter.acquire()
            if limiter is not self.limiter:
                continue  # the rate changed while we queued: queue again at the new rate
            if self.paused_until > loop.time():
                continue  # a Retry-After arrived while we queued: honour it
            return loop.time() - start

    async def note_status(
        self, loop: asyncio.AbstractEventLoop, status: int, headers: Mapping[str, str], started: float
    ) -> float | None:
        """Feed a status to the pause and AIMD logic; return the host pause it set, if any."""
        now = loop.time()
        pause = None
        if status in PAUSING_STATUSES:
            pause = parse_retry_after(headers.get("retry-after"))
            if pause is not None:
                pause = min(pause, self.limits.retry_after_max)
                if now + pause > self.paused_until:
                    self.paused_until = now + pause
                    # the bucket must not refill during the pause and burst the moment it ends
                    if self.limiter is not None:
                        await self._set_rate(self.rate)
        if self.limiter is None and status == 429:
            log.warning(
                "%s: HTTP 429 although the plan says the rate is unlimited; adapting from now on", self.name
            )
            self.adaptive, self.configured = True, math.inf
            await self._set_rate(self.limits.adaptive_start)
            self._last_cut = now
            return pause
        if not self.adaptive:
            if self.limiter is not None:
                await self._follow_fixed_limit(now, status, started)
            return pause
        if status == 429:
            # Requests started before the last cut reflect the old rate; a burst of them counts once.
            if started >= self._last_cut and now - self._last_cut >= 1.0:
                # The server has a limit near here: remember it. Overshooting it in slow start
                # may be by up to 2x, so halve then; later a 429 only means "a little less".
                self._ceiling = self.rate
                factor = 0.5 if self._slow_start else 0.9
                await self._set_rate(max(self.limits.adaptive_min, self.rate * factor))
                self._last_cut = now
                self._slow_start = False
            self._window_start, self._window_ok = now, 0
        elif status < 500:
            self._window_ok += 1
            elapsed = now - self._window_start
            # Slow start (before the first 429): double every clean half second, like TCP, so an
            # unknown but generous limit is found in seconds. Then climb +10% per clean half second
            # to just under the remembered ceiling, hold there, and probe 2% higher every 30 s.
            if elapsed >= 0.5:
                # Probe upward only if the rate was actually used; idle time proves nothing.
                if self._window_ok >= 0.5 * self.rate * elapsed and self.rate < self.limits.adaptive_max:
                    await self._raise_rate(now)
                self._window_start, self._window_ok = now, 0
        return pause

    async def _follow_fixed_limit(self, now: float, status: int, started: float) -> None:
        """A configured rate the server keeps refusing is too high: ease off 20% per second of
        429s, then return towards the configured rate (+5% per clean 2 s)."""
        configured = self.configured
        if status == 429:
            if started >= self._last_cut and now - self._last_cut >= 1.0:
                await self._set_rate(max(configured * 0.05, self.rate * 0.8))
                self._last_cut = now
            self._window_start = now
        elif self.rate < configured and now - self._window_start >= 2.0:
            await self._set_rate(min(configured, self.rate * 1.05))
            self._window_start = now

    async def _raise_rate(self, now: float) -> None:
        if self._slow_start or self._ceiling is None:
            target = self.rate * 2.0
        else:
            hold = HOLD * self._ceiling
            if self.rate < hold:
                target = min(self.rate * 1.1, hold)
                self._at_ceiling_since = now
            elif now - self._at_ceiling_since >= 30.0:
                self._ceiling *= 1.02  # no 429 for 30 s at the hold rate: the limit may have risen
                self._at_ceiling_since = now
                target = HOLD * self._ceiling
            else:
                return
        await self._set_rate(min(self.limits.adaptive_max, target))

    def _new_limiter(self, rate: float) -> AsyncLimiter:
        # Adaptive buckets hold at most one second of requests so a low rate is not defeated by a burst.
        # Keep half the server's burst as headroom: our requests reach it with some jitter, and a
        # full-size burst followed by exactly `rate` trips its bucket on the first early arrival.
        burst = self.limits.burst / 2 if not self.adaptive else min(self.limits.burst, rate)
        burst = max(1.0, float(burst))
        return AsyncLimiter(max_rate=burst, time_period=burst / rate)

    async def _set_rate(self, rate: float) -> None:
        limiter = self._new_limiter(rate)
        # Start the new bucket full: no burst right after a change. Filling an empty bucket never
        # suspends, so no other task can see the new limiter half set up.
        await limiter.acquire(limiter.max_rate)
        log.info("%s: rate %.2f -> %.2f req/s, bucket emptied", self.name, self.rate, rate)
        self.rate = rate
        self.limiter = limiter
