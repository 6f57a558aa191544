"""How a plan names a Civica Learning portal."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from migrator.http import HostLimits


class CivicaTarget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="civica", tag_field="platform"):
    platform: ClassVar[str] = "civica"
    credential_hint: ClassVar[str] = "api_key or scope (the portal domain)"
    base_url: str = "https://api.civica-learning.com"  # add /eu or /us for those regions
    scope: str  # the portal's domain name: the Basic-auth user name
    api_key: str
    limits: HostLimits = msgspec.field(default_factory=lambda: HostLimits(rate=None, concurrency=16))
    poll_initial: float = 0.25  # first GET /status/{tid} after this many seconds, then doubling
    poll_max: float = 5.0
    poll_timeout: float = 600.0  # a status still pending after this is checked with GetUser
    suppress_notifications: bool = True

    def secret_values(self) -> list[str]:
        return [self.api_key]
