"""The retry policy: which answers are worth another attempt, how long to wait, and when a write
may be resent without risking a duplicate."""

from __future__ import annotations

import email.utils
import math
import random
import time

from migrator.http.limits import HostLimits

__all__ = [
    "AUTH_STATUSES",
    "MAX_THROTTLED",
    "NOT_APPLIED_STATUSES",
    "PAUSING_STATUSES",
    "RETRYABLE_STATUSES",
    "UNREACHED_ATTEMPTS",
    "UNREACHED_DELAY_CAP",
    "backoff_delay",
    "parse_retry_after",
    "retry_budget",
    "retry_delay",
]

# Statuses that say "not now" rather than "never": worth another attempt.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Of those, the ones that prove the server did not act on the request (safe to resend a POST).
NOT_APPLIED_STATUSES = frozenset({408, 429})
MAX_THROTTLED = 200  # 429s one request may meet before it gives up all the same
AUTH_STATUSES = frozenset({401, 403})
PAUSING_STATUSES = frozenset({429, 503})
# A host that has never accepted a connection in this run is most likely misnamed (wrong port or
# host name), not briefly down: give up after a few quick attempts instead of the full backoff.
UNREACHED_ATTEMPTS = 3
UNREACHED_DELAY_CAP = 0.5  # seconds between those attempts, at most


def backoff_delay(limits: HostLimits, attempt: int) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
    return random.uniform(0, min(limits.backoff_cap, limits.backoff_base * 2 ** (attempt - 1)))


def retry_budget(limits: HostLimits, *, never_reached: bool) -> int:
    """Retries a request may make. A host that never accepted a connection gets only a few."""
    if never_reached:
        return min(limits.max_retries, UNREACHED_ATTEMPTS - 1)
    return limits.max_retries


def retry_delay(limits: HostLimits, attempt: int, *, never_reached: bool) -> float:
    """Seconds before retry number ``attempt`` when no ``Retry-After`` said how long."""
    delay = backoff_delay(limits, attempt)
    return min(delay, UNREACHED_DELAY_CAP) if never_reached else delay


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT by definition
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)
