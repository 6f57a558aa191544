"""Per-credential token bucket and the Retry-After header forms the simulators emit."""

from __future__ import annotations

import math
import time
from email.utils import formatdate

RETRY_AFTER_FORMS: tuple[str, ...] = ("seconds", "date", "none")


class TokenBucketLimiter:
    """``rate`` tokens/s refill, ``burst`` capacity, one bucket per credential string.

    ``rate=None`` disables limiting entirely.
    """

    def __init__(self, rate: float | None, burst: int | None = None, retry_after: str = "seconds") -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 or None, got {rate!r}")
        if retry_after not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMS}, got {retry_after!r}")
        self.rate = rate
        self.burst = burst if burst is not None else (max(1, round(rate)) if rate else 1)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.retry_after = retry_after
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)

    def acquire(self, key: str, now: float | None = None) -> float | None:
        """Take a token; return None when allowed, else seconds until a token is available."""
        if self.rate is None:
            return None
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def headers(self, wait: float) -> dict[str, str]:
        """Retry-After in the configured form; seconds round up so clients never retry early."""
        seconds = max(1, math.ceil(wait))
        if self.retry_after == "seconds":
            return {"Retry-After": str(seconds)}
        if self.retry_after == "date":
            return {"Retry-After": formatdate(math.ceil(time.time()) + seconds, usegmt=True)}
        return {}
