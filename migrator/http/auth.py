"""How a host learns who we are: a fixed header, HTTP Basic, or a token from a login call.

Header and Basic auth are precomputed once into the session's default headers: they cost a
request nothing. :class:`LoginToken` describes a login route whose answer holds a token that is
then sent on every call (as a header, or as a query parameter); :class:`TokenState` is that
token at run time, shared by every request of one :class:`~migrator.http.HostClient` and renewed
single-flight: however many requests find it expired or refused at once, one login is made and
the others wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrator.http.errors import AuthError
from migrator.http.redact import names_a_credential

__all__ = ["Auth", "BasicAuth", "HeaderAuth", "LoginToken", "TokenState"]


@dataclass(frozen=True, slots=True)
class HeaderAuth:
    """A fixed credential header, e.g. ``HeaderAuth("X-Api-Key", key)``."""

    name: str
    value: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {self.name: self.value}

    def secrets(self) -> list[str]:
        return [self.value]


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP Basic, sent as a plain ``Authorization`` header (aiohttp >= 3.14 deprecates ``auth=``)."""

    login: str
    password: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        pair = base64.b64encode(f"{self.login}:{self.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}

    def secrets(self) -> list[str]:
        return [self.login, self.password]


@dataclass(frozen=True, slots=True)
class LoginToken:
    """A token obtained by POSTing ``body`` (JSON) to ``path`` (relative to the base URL).

    ``token_field`` is where the answer holds the token (dots descend into objects); None means
    the answer is the bare token as a JSON string (Absorb). The token travels as
    ``header: "<scheme> <token>"`` (no scheme: the bare token), or, with ``query_param`` set, as
    that query parameter instead (NexPort's ``access_token``). It is renewed ``refresh_early``
    seconds before it expires: after ``expires_field`` seconds when the answer says, else after
    ``lifetime`` (None: only when a request is refused with 401).

    Values of ``body`` under credential-like names (password, privateKey, ...) are secrets: they
    never appear in messages.
    """

    path: str
    body: Mapping[str, Any] = field(repr=False)
    token_field: str | None = "access_token"
    header: str = "Authorization"
    scheme: str = "Bearer"
    query_param: str | None = None
    expires_field: str | None = "expires_in"
    lifetime: float | None = None
    refresh_early: float = 30.0

    def headers(self) -> dict[str, str]:
        return {}  # the token is not known before the first login

    def secrets(self) -> list[str]:
        return [
            str(v) for k, v in self.body.items() if names_a_credential(str(k)) and isinstance(v, str | int)
        ]

    def header_value(self, token: str) -> str:
        return f"{self.scheme} {token}" if self.scheme else token

    def read(self, answer: Any) -> tuple[str | None, float | None]:
        """The token and its lifetime in seconds (None: unknown) from the login's JSON answer."""
        token: Any = answer
        for key in self.token_field.split(".") if self.token_field else ():
            token = token.get(key) if isinstance(token, dict) else None
        lifetime = self.lifetime
        if self.expires_field and isinstance(answer, dict):
            said = answer.get(self.expires_field)
            if isinstance(said, int | float) and not isinstance(said, bool) and said > 0:
                lifetime = float(said)
        return (token if isinstance(token, str) and token else None), lifetime


Auth = HeaderAuth | BasicAuth | LoginToken


class TokenState:
    """The current login token of one host, renewed single-flight.

    ``generation`` counts logins. A request notes the generation it was sent with; when it is
    refused (401), :meth:`renew` with that generation logs in again only if nobody has since:
    concurrent refusals queue on one lock, and all but the first find the generation moved on
    and simply retry with the fresh token. A refused login is remembered, so the waiters raise
    the same :class:`AuthError` instead of each trying the wrong password again.
    """

    __slots__ = ("spec", "token", "generation", "expires_at", "_lock", "_refused")

    def __init__(self, spec: LoginToken) -> None:
        self.spec = spec
        self.token: str | None = None
        self.generation = 0
        self.expires_at = -math.inf  # loop.time() from which the token must be renewed first
        self._lock = asyncio.Lock()
        self._refused: AuthError | None = None

    async def renew(
        self, seen: int, login: Callable[[], Awaitable[tuple[str, float | None]]], now: Callable[[], float]
    ) -> None:
        """Log in again unless someone already did since generation ``seen``."""
        async with self._lock:
            if self.generation != seen:
                return  # renewed while we waited: retry with that token
            if self._refused is not None:
                raise self._refused
            try:
                token, lifetime = await login()
            except AuthError as err:
                self._refused = err
                raise
            self.token = token
            self.generation += 1
            self.expires_at = (
                math.inf if lifetime is None else now() + max(0.0, lifetime - self.spec.refresh_early)
            )
