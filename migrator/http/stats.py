"""Request counters, per host and per stream: :class:`RequestStats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestStats"]


@dataclass(slots=True)
class RequestStats:
    """Mutable counters. Invariant: ``requests == sum(status_counts.values()) + errors``."""

    requests: int = 0  # attempts sent (each retry is another request)
    retries: int = 0
    rate_limited: int = 0  # 429 responses
    errors: int = 0  # attempts that ended without a status: timeouts, resets, truncated bodies
    wait_seconds: float = 0.0  # limiter queueing, host pauses (Retry-After) and backoff sleeps
    status_counts: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "errors": self.errors,
            "wait_seconds": round(self.wait_seconds, 3),
            "status_counts": dict(sorted(self.status_counts.items())),
        }
