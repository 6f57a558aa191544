"""Request counters every simulator keeps (read by tests and benchmarks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Enough for long benchmark runs while bounding memory (~16 MB of floats).
REQUEST_TIMES_CAP = 2_000_000


@dataclass
class SimStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    request_times: list[float] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)  # injected fault kind -> count

    def received(self) -> None:
        self.requests += 1
        # Past the cap we stop recording rather than evict, so early timings stay comparable.
        if len(self.request_times) < REQUEST_TIMES_CAP:
            self.request_times.append(time.monotonic())

    def answered(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def faulted(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(self.faults),
        }
