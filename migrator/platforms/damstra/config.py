"""How a plan names a Damstra Learning tenant."""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from migrator.http import HostLimits


class DamstraSource(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="damstra", tag_field="platform"):
    platform: ClassVar[str] = "damstra"
    credential_hint: ClassVar[str] = "access_key"
    base_url: str = "https://app.velpic.com/api/v2"
    access_key: str
    # Damstra's limits are undocumented and every tenant shares one host: stay modest by default.
    limits: HostLimits = msgspec.field(default_factory=lambda: HostLimits(rate=None, concurrency=8))
    page_size: int = 100  # the doc shows no maximum; the simulator clamps above 100
    schedule_fetchers: int = 16  # users whose lesson schedules are fetched at once
    # a clientStatusId the doc does not define (only 56 Active and 57 Not Current are): guessing
    # would carry a user in the wrong state without a word, so by default such a user is
    # dead-lettered, naming the value; "active" or "inactive" carries them in that state
    unknown_status: Literal["dead_letter", "active", "inactive"] = "dead_letter"

    def secret_values(self) -> list[str]:
        return [self.access_key]
