"""How hard one host may be driven: :class:`HostLimits`, a plan section of its own."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["UNLIMITED", "HostLimits", "NonNegative", "Positive", "PositiveInt"]

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
UNLIMITED = "unlimited"


class HostLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How hard one host may be driven. ``rate=None`` means the limit is unknown: adapt (AIMD);
    ``rate="unlimited"`` means the host has none: only concurrency bounds it (a 429 switches to adapting)."""

    rate: Positive | Literal["unlimited"] | None = None  # requests per second; None = adaptive
    burst: PositiveInt = 10
    concurrency: PositiveInt = 16
    timeout: Positive = 30.0  # seconds per attempt
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 8
    backoff_base: NonNegative = 0.25
    backoff_cap: NonNegative = 30.0
    retry_after_max: NonNegative = 120.0  # a hostile or buggy Retry-After cannot stall a run for hours
    adaptive_start: Positive = 20.0
    adaptive_min: Positive = 0.5
    adaptive_max: Positive = 10000.0

    def __post_init__(self) -> None:
        # Meta constraints only run when decoding a plan; direct construction is checked here too.
        if (
            self.rate is not None
            and self.rate != UNLIMITED
            and not (isinstance(self.rate, float | int) and self.rate > 0)
        ):
            raise ValueError('rate must be > 0, "unlimited", or omitted for adaptive')
        if self.burst < 1 or self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("burst and concurrency must be >= 1 and max_retries >= 0")
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0")
        if not 0 < self.adaptive_min <= self.adaptive_start <= self.adaptive_max:
            raise ValueError("need 0 < adaptive_min <= adaptive_start <= adaptive_max")
