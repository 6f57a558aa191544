"""One polite, retrying HTTP client per (host, credential): :class:`HostClient`.

Everything that talks to an LMS API goes through a ``HostClient``; it knows about status codes,
rate limits and retries, and nothing about records or mappings.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import logging
import math
import random
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any, Literal
from urllib.parse import quote, quote_plus, unquote_plus

import aiohttp
import msgspec
import orjson
from aiolimiter import AsyncLimiter
from yarl import URL

__all__ = [
    "AmbiguousOutcome",
    "AuthError",
    "HostClient",
    "HostLimits",
    "HostUnreachable",
    "HttpError",
    "ProtocolError",
    "RequestStats",
    "Response",
]

log = logging.getLogger(__name__)

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
UNLIMITED = "unlimited"

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

# Header names whose values are never credentials; everything else a caller sets is treated as secret.
_PUBLIC_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "content-type", "user-agent", "connection"}
)
_EXCERPT_CHARS = 300
_REDACTED = "***"
# Query keys whose values are credentials whatever their value: matched anywhere in the lowercased
# name (X-Amz-Signature, accessToken, apikey) or, for short words that hide inside ordinary
# names (`key` in "keyword", `auth` in "author"), as one word of the name (sig, api_key, authCode).
_CREDENTIAL_KEY_PARTS = (
    "token", "secret", "passw", "signature", "credential", "apikey", "authoriz", "oauth", "session",
    "cookie", "jwt", "private",
)  # fmt: skip
_CREDENTIAL_KEY_WORDS = frozenset({"key", "sig", "code", "auth", "pwd", "pass", "pin", "otp", "hmac", "nonce"})
_MIN_ECHO_REDACTED = 4  # characters a credential-named query value needs to be hunted in error bodies
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


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
        if self.rate is not None and self.rate != UNLIMITED and not (isinstance(self.rate, float | int) and self.rate > 0):
            raise ValueError('rate must be > 0, "unlimited", or omitted for adaptive')
        if self.burst < 1 or self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("burst and concurrency must be >= 1 and max_retries >= 0")
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0")
        if not 0 < self.adaptive_min <= self.adaptive_start <= self.adaptive_max:
            raise ValueError("need 0 < adaptive_min <= adaptive_start <= adaptive_max")


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


class HttpError(Exception):
    """The request failed for good: a non-retryable status, or retries ran out.

    ``str()`` carries only the method, the path (query values redacted) and a redacted excerpt.
    """

    def __init__(
        self, message: str, *, status: int | None, method: str, path: str, body_excerpt: str = "", host: str = ""
    ) -> None:
        super().__init__(message)
        self.host = host  # the HostClient's name, so the caller can say which side failed
        self.status = status
        self.method = method
        self.path = path
        self.body_excerpt = body_excerpt


class AuthError(HttpError):
    """401/403: the credential is wrong or lacks rights. Stops the run; retrying cannot help."""


class HostUnreachable(HttpError):
    """No connection could be made to the host until the retry budget ran out. Stops the run:
    every record would fail the same way, so none is dead-lettered for it.

    ``str()`` is one line naming the base URL, what failed, how many attempts and for how long;
    ``base_url`` and ``tried`` hold the parts for callers that phrase their own line.
    """

    def __init__(self, *, base_url: str, tried: str, reached: bool, method: str, path: str, host: str) -> None:
        self.base_url = base_url
        self.tried = tried
        self.reached = reached  # the host did answer earlier in this run: down, not misnamed
        super().__init__(
            f"cannot reach {base_url}: {tried}; {self.advice('its base_url')}",
            status=None,
            method=method,
            path=path,
            host=host,
        )

    def advice(self, setting: str) -> str:
        """What to check, naming the plan setting (e.g. "`target.base_url`") that holds the URL."""
        if self.reached:
            return "it answered earlier in this run: check that the server is up"
        return f"check the host and port in {setting} and that the server is up"


class AmbiguousOutcome(HttpError):
    """A non-idempotent request may or may not have been applied; look it up before resending."""


class ProtocolError(HttpError):
    """The server answered, but not in the shape the API promises (e.g. invalid JSON)."""


class _Redactor:
    """Replaces every known secret (and its URL-encoded forms) with ``***``."""

    __slots__ = ("_needles",)

    def __init__(self, secrets: Iterable[str]) -> None:
        needles: set[str] = set()
        for s in secrets:
            if s:
                needles.update({s, quote(s, safe=""), quote_plus(s)})
        # Longest first so a secret containing another is replaced whole.
        self._needles = sorted(needles, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, _REDACTED)
        return text

    def __repr__(self) -> str:
        return f"<_Redactor {len(self._needles)} needles>"


def _excerpt(body: bytes, redact: Callable[[str], str]) -> str:
    # Redact before truncating: a cut could otherwise leave a secret's prefix unrecognised.
    return redact(body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace"))[:_EXCERPT_CHARS]


class Response:
    """A final answer whose status the caller accepted."""

    __slots__ = ("status", "headers", "body", "method", "path", "_client", "_params")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # case-insensitive names
        self.body = body
        self.method = ""  # for error messages only
        self.path = ""
        self._client: HostClient | None = None  # to redact secrets and query values in messages
        self._params: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            client = self._client
            redact = client._excerpt_redactor(self.path, self._params) if client is not None else _no_redact
            path = client._show_path(self.path, self._params) if client is not None else self.path
            raise ProtocolError(
                f"{self.method} {path}: HTTP {self.status} body is not valid JSON ({exc})",
                status=self.status,
                method=self.method,
                path=path,
                body_excerpt=_excerpt(self.body, redact),
            ) from None


def _no_redact(text: str) -> str:
    return text


HOLD = 0.9  # adaptive: share of the last rate that met a 429 to settle at


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


def _basic_auth(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Transport(msgspec.Struct, frozen=True):
    """An attempt that ended without a status."""

    reason: str
    surely_not_sent: bool  # could not even connect: resending cannot duplicate anything


def _connect_failure(exc: aiohttp.ClientError) -> str:
    """What a failed connect means to a person: the usual slips get their plain names."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timed out"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(getattr(exc, "os_error", None), ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect ({type(exc).__name__})"


def _names_a_credential(key: str) -> bool:
    lowered = key.lower()
    if any(part in lowered for part in _CREDENTIAL_KEY_PARTS):
        return True
    return any(word.lower() in _CREDENTIAL_KEY_WORDS for word in _KEY_WORDS.findall(key))


def _credential_values(path: str, params: Mapping[str, Any] | None) -> list[str]:
    """Values a request sends under credential-like query keys, decoded. Shorter ones are left
    out: redacting every "1" of an error body would hide the body, not a secret."""
    values = []
    for part in path.partition("?")[2].split("&"):
        key, has_value, value = part.partition("=")
        if has_value and _names_a_credential(unquote_plus(key)):
            values.append(unquote_plus(value))
    values += [str(v) for k, v in (params or {}).items() if _names_a_credential(str(k))]
    return [v for v in values if len(v) >= _MIN_ECHO_REDACTED]


class HostClient:
    """Shared HTTP client for one (base URL, credential): rate, concurrency, retries, pauses.

    Every attempt passes three gates before it is sent:

    1. **Concurrency** -- a semaphore of ``limits.concurrency`` slots (the connection pool has the
       same size, so a slot always has a connection). Slots are released during backoff sleeps.
       A host with ``rate="unlimited"`` (and no pause in force) skips the semaphore and the two
       gates below: the pool's ``concurrency`` connections are then the cap.
    2. **Host pause** -- ``paused_until`` is set from a 429/503 ``Retry-After`` (delta-seconds or
       HTTP-date, capped at ``retry_after_max``). It applies to the whole host: every attempt
       waits it out, and one that was already queued re-checks it after the limiter lets it go.
    3. **Rate** -- a leaky bucket (:class:`aiolimiter.AsyncLimiter`) of capacity ``burst`` that
       drains at ``rate`` per second, i.e. ``AsyncLimiter(burst, burst / rate)``. An idle host
       may start ``burst`` requests at once, then one every ``1/rate`` s, so any 1-second window
       holds at most ``rate + burst`` starts.

    When ``limits.rate`` is None the limit is unknown and the rate adapts, AIMD style like TCP
    congestion control: start at ``adaptive_start`` and double each clean half second until the
    first 429 (slow start); a 429 halves the rate (at most once per
    second, and only for requests started since the last cut, so one burst of 429s counts once;
    never below ``adaptive_min``); each second of clean responses in which the rate was actually
    used (>= half of it) raises the rate by 10% (never above ``adaptive_max``). A rate change
    swaps in a new, full bucket: no burst right after a change, and attempts queued on the old
    bucket queue again on the new one once released.

    Failures: 408/429/500/502/503/504, timeouts and connection errors are retried up to
    ``max_retries`` times with full-jitter exponential backoff (``uniform(0, min(cap,
    base * 2**n))``); a ``Retry-After`` replaces the backoff. 401/403 raise :class:`AuthError`,
    other statuses outside ``accept`` raise :class:`HttpError` at once. Redirects are not
    followed, so credentials never travel to another host.

    A request whose last attempt could not even connect raises :class:`HostUnreachable`. While
    the host has never accepted a connection in this run, that comes after ``UNREACHED_ATTEMPTS``
    quick attempts (a wrong port is not a transient fault); once it has, the full budget applies.

    ``idempotent=False`` requests are resent only when the server surely did not apply them
    (429, 408, or no connection could be made). After a timeout, a dropped connection, a truncated
    body or a 5xx they raise :class:`AmbiguousOutcome` so the caller can look the record up first.
    """

    def __init__(
        self,
        base_url: str,
        *,
        limits: HostLimits,
        headers: Mapping[str, str] | None = None,
        auth: aiohttp.BasicAuth | tuple[str, str] | None = None,
        secrets: Iterable[str] = (),
        name: str | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got scheme {url.scheme!r}")
        if url.user or url.password:
            raise ValueError("base_url must not carry credentials; pass auth= or headers= instead")
        if url.scheme == "http" and not _is_loopback(url.host):
            raise ValueError(f"refusing plain http:// to non-loopback host {url.host}; use https://")
        self.base_url = str(url.with_query(None).with_fragment(None)).rstrip("/")
        self.name = name or url.host
        self.limits = limits
        self.stats = RequestStats()

        self._headers = dict(headers or {})
        secret_values = list(secrets)
        if auth is not None:
            # Sent as a plain header: aiohttp >= 3.14 deprecates its auth= parameter.
            login, password = auth if isinstance(auth, tuple) else (auth.login, auth.password)
            self._headers["Authorization"] = _basic_auth(login, password)
            secret_values += [login, password]
        secret_values += [v for k, v in self._headers.items() if k.lower() not in _PUBLIC_HEADERS]
        # "Bearer <token>", "Basic <b64>": the bare credential may be echoed without its scheme.
        secret_values += [p[1] for v in secret_values if len(p := v.split(None, 1)) == 2]
        self._redact = _Redactor(secret_values)

        self._session: aiohttp.ClientSession | None = None
        self._reached = False  # some attempt got a connection: failing to connect now is an outage
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._paused_until = 0.0  # loop.time() before which nothing is sent to this host
        self._adaptive = limits.rate is None
        self._slow_start = True
        self._limiter: AsyncLimiter | None = None  # None: no rate limit (an "unlimited" host)
        if limits.rate == UNLIMITED:
            self._rate = self._configured = math.inf
        else:
            self._rate = limits.adaptive_start if self._adaptive else float(limits.rate)  # type: ignore[arg-type]
            self._configured = math.inf if self._adaptive else self._rate
            self._limiter = self._new_limiter(self._rate)
        self._timeout = aiohttp.ClientTimeout(total=limits.timeout)
        # a request without its own headers or body type rides on the session's headers as they are
        self._json_needs_type = not any(k.lower() == "content-type" for k in self._headers)
        self._urls: dict[str, URL] = {}  # path → URL: building a yarl URL per request is not free
        self._ceiling: float | None = None  # adaptive: the rate at which the server last said 429
        self._at_ceiling_since = 0.0
        # AIMD bookkeeping (loop.time() values)
        self._last_cut = -math.inf
        self._window_start = 0.0
        self._window_ok = 0

    def __repr__(self) -> str:
        mode = "adaptive" if self._adaptive else "unlimited" if self._limiter is None else "fixed"
        return f"<HostClient {self.name} {self.base_url} rate={self._rate:.2f}/s ({mode})>"

    @property
    def current_rate(self) -> float | None:
        """Requests per second the limiter currently allows (None: no limit)."""
        return None if self._limiter is None else self._rate

    @property
    def paused_until(self) -> float:
        """``loop.time()`` until which the host is paused by a Retry-After (0 if never)."""
        return self._paused_until

    async def __aenter__(self) -> HostClient:
        connector = aiohttp.TCPConnector(limit=self.limits.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, raise_for_status=False, timeout=self._timeout
        )
        # aiohttp silently resends PUT/DELETE once when a kept-alive connection drops; that would hide
        # a resend of a non-idempotent write and skew the counters. Retries are ours alone.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        loop = asyncio.get_running_loop()
        self._window_start = loop.time()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ------------------------------------------------------------------ request

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = True,
        stats: RequestStats | None = None,
    ) -> Any:
        """``request`` and decode the JSON body. A body that is not JSON (cut short by a proxy, a
        gateway's HTML error page) is retried like a transport error when the request is
        idempotent; for a write it means the outcome is unknown."""
        attempt = 0
        while True:
            resp = await self.request(method, path, params=params, json=json, idempotent=idempotent, stats=stats)
            try:
                return resp.json()
            except ProtocolError as err:
                attempt += 1
                if not idempotent:
                    raise AmbiguousOutcome(
                        str(err), status=err.status, method=err.method, path=err.path, host=self.name
                    ) from None
                if attempt > self.limits.max_retries:
                    raise
                for counter in (self.stats,) if stats is None or stats is self.stats else (self.stats, stats):
                    counter.retries += 1
                delay = random.uniform(0, min(self.limits.backoff_cap, self.limits.backoff_base * 2 ** (attempt - 1)))
                log.info("%s: %s; retrying in %.2fs", self.name, err, delay)
                await asyncio.sleep(delay)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (200,),
        idempotent: bool = True,
        stats: RequestStats | None = None,
    ) -> Response:
        """Send ``method base_url+path``; return the Response once its status is in ``accept``."""
        session = self._session
        if session is None:
            raise RuntimeError("HostClient used outside 'async with'")
        method = method.upper()
        if not path.startswith("/"):
            path = "/" + path
        url = self._urls.get(path)
        if url is None:
            # paths arrive already encoded (connectors.segment): yarl must not re-encode or drop `..`
            url = URL(self.base_url + path, encoded=True)
            if len(self._urls) < 256:
                self._urls[path] = url
        data = orjson.dumps(json) if json is not None else None
        req_headers: dict[str, str] | None = None
        if headers or (data is not None and self._json_needs_type):
            req_headers = dict(headers or {})
            if data is not None:
                req_headers.setdefault("Content-Type", "application/json")
        counters = (self.stats,) if stats is None or stats is self.stats else (self.stats, stats)
        loop = asyncio.get_running_loop()

        attempt = throttled = 0
        failing_since: float | None = None  # loop.time() the first failed attempt started
        while True:
            attempt += 1
            if self._limiter is None and self._paused_until <= (started := loop.time()):
                # no rate limit and no pause: nothing to queue for but a connection, and the pool
                # holds `concurrency` of them, so the pool alone keeps the cap
                waited = 0.0
                outcome = await self._send(session, method, url, params, data, req_headers)
            else:
                async with self._slots:
                    waited = await self._gate(loop)
                    started = loop.time()
                    outcome = await self._send(session, method, url, params, data, req_headers)
            for c in counters:
                c.wait_seconds += waited
                c.requests += 1

            if isinstance(outcome, _Transport):
                shown = self._show_path(path, params)
                for c in counters:
                    c.errors += 1
                if not outcome.surely_not_sent:
                    self._reached = True
                if not idempotent and not outcome.surely_not_sent:
                    raise AmbiguousOutcome(
                        f"{method} {shown}: {outcome.reason}; the request may have been applied",
                        status=None,
                        method=method,
                        path=shown,
                    )
                status: int | None = None
                retry_after = None
                reason, excerpt = outcome.reason, ""
            else:
                self._reached = True
                status = outcome.status
                for c in counters:
                    c.status_counts[status] = c.status_counts.get(status, 0) + 1
                if status == 429:
                    for c in counters:
                        c.rate_limited += 1
                # a fixed or absent limit that is being kept needs no bookkeeping per answer
                retry_after = None
                if self._adaptive or status in PAUSING_STATUSES or self._rate < self._configured:
                    retry_after = await self._note_status(loop, status, outcome.headers, started)
                if status in accept:
                    outcome.method, outcome.path = method, path
                    # the message path (query values hidden, secrets redacted) is built only if needed
                    outcome._client, outcome._params = self, params
                    return outcome
                shown = self._show_path(path, params)
                excerpt = _excerpt(outcome.body, self._excerpt_redactor(path, params))
                reason = f"HTTP {status}"
                if status in AUTH_STATUSES:
                    raise AuthError(
                        f"{method} {shown}: {reason} (credential rejected): {excerpt[:120]}",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=excerpt,
                        host=self.name,
                    )
                if status not in RETRYABLE_STATUSES:
                    raise HttpError(
                        f"{method} {shown}: {reason}: {excerpt[:120]}",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=excerpt,
                    )
                if not idempotent and status not in NOT_APPLIED_STATUSES:
                    raise AmbiguousOutcome(
                        f"{method} {shown}: {reason}; the request may have been applied",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=excerpt,
                    )

            if status == 429 and throttled < MAX_THROTTLED:
                # "slow down" is not a failure: it does not use up the retry budget
                throttled += 1
                attempt -= 1
            if failing_since is None:
                failing_since = started
            cannot_connect = isinstance(outcome, _Transport) and outcome.surely_not_sent
            never_reached = cannot_connect and not self._reached
            budget = self.limits.max_retries
            if never_reached:
                budget = min(budget, UNREACHED_ATTEMPTS - 1)
            if attempt > budget:
                if cannot_connect:
                    raise HostUnreachable(
                        base_url=self._redact(self.base_url),
                        tried=f"{reason}, {attempt} attempts over {loop.time() - failing_since:.1f}s"
                        f" ({method} {shown})",
                        reached=self._reached,
                        method=method,
                        path=shown,
                        host=self.name,
                    )
                raise HttpError(
                    f"{method} {shown}: gave up after {attempt} attempts; last: {reason}",
                    status=status,
                    method=method,
                    path=shown,
                    body_excerpt=excerpt,
                )
            for c in counters:
                c.retries += 1
            if retry_after:
                # The host pause is the wait; the gate will hold this attempt (and everyone else).
                log.info("%s: %s %s -> %s, host paused %.1fs", self.name, method, shown, reason, retry_after)
                continue
            delay = random.uniform(
                0, min(self.limits.backoff_cap, self.limits.backoff_base * 2 ** (attempt - 1))
            )
            if never_reached:
                delay = min(delay, UNREACHED_DELAY_CAP)
            log.debug(
                "%s: %s %s -> %s, retry %d/%d in %.2fs",
                self.name,
                method,
                shown,
                reason,
                attempt,
                self.limits.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
            for c in counters:
                c.wait_seconds += delay

    # ------------------------------------------------------------------ internals

    async def _gate(self, loop: asyncio.AbstractEventLoop) -> float:
        """Wait out the host pause and the rate limiter; return seconds waited."""
        start = loop.time()
        while True:
            pause = self._paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            limiter = self._limiter
            if limiter is None:
                return loop.time() - start  # no rate limit: only the pause holds requests
            await limiter.acquire()
            if limiter is not self._limiter:
                continue  # the rate changed while we queued: queue again at the new rate
            if self._paused_until > loop.time():
                continue  # a Retry-After arrived while we queued: honour it
            return loop.time() - start

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> Response | _Transport:
        """One attempt. Transport failures come back as values so the retry policy sits in one place."""
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                return Response(resp.status, resp.headers, await resp.read())
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            # A TLS failure will not fix itself; never retry, never downgrade.
            raise HttpError(
                f"{method} {self._show_path(url.path, None)}: TLS error: {type(exc).__name__}",
                status=None,
                method=method,
                path=self._show_path(url.path, None),
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return _Transport(_connect_failure(exc), surely_not_sent=True)
        except TimeoutError:
            return _Transport(f"timed out after {self.limits.timeout:g}s", surely_not_sent=False)
        except aiohttp.ClientPayloadError as exc:
            return _Transport(f"truncated body ({type(exc).__name__})", surely_not_sent=False)
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
            return _Transport(f"connection lost ({type(exc).__name__})", surely_not_sent=False)

    async def _note_status(
        self, loop: asyncio.AbstractEventLoop, status: int, headers: Mapping[str, str], started: float
    ) -> float | None:
        """Feed a status to the pause and AIMD logic; return the host pause it set, if any."""
        now = loop.time()
        pause = None
        if status in PAUSING_STATUSES:
            pause = parse_retry_after(headers.get("retry-after"))
            if pause is not None:
                pause = min(pause, self.limits.retry_after_max)
                if now + pause > self._paused_until:
                    self._paused_until = now + pause
                    # the bucket must not refill during the pause and burst the moment it ends
                    if self._limiter is not None:
                        await self._set_rate(self._rate)
        if self._limiter is None and status == 429:
            log.warning("%s: HTTP 429 although the plan says the rate is unlimited; adapting from now on", self.name)
            self._adaptive, self._configured = True, math.inf
            await self._set_rate(self.limits.adaptive_start)
            self._last_cut = now
            return pause
        if not self._adaptive:
            if self._limiter is not None:
                await self._follow_fixed_limit(now, status, started)
            return pause
        if status == 429:
            # Requests started before the last cut reflect the old rate; a burst of them counts once.
            if started >= self._last_cut and now - self._last_cut >= 1.0:
                # The server has a limit near here: remember it. Overshooting it in slow start
                # may be by up to 2x, so halve then; later a 429 only means "a little less".
                self._ceiling = self._rate
                factor = 0.5 if self._slow_start else 0.9
                await self._set_rate(max(self.limits.adaptive_min, self._rate * factor))
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
                if self._window_ok >= 0.5 * self._rate * elapsed and self._rate < self.limits.adaptive_max:
                    await self._raise_rate(now)
                self._window_start, self._window_ok = now, 0
        return pause

    async def _follow_fixed_limit(self, now: float, status: int, started: float) -> None:
        """A configured rate the server keeps refusing is too high: ease off 20% per second of
        429s, then return towards the configured rate (+5% per clean 2 s)."""
        configured = self._configured
        if status == 429:
            if started >= self._last_cut and now - self._last_cut >= 1.0:
                await self._set_rate(max(configured * 0.05, self._rate * 0.8))
                self._last_cut = now
            self._window_start = now
        elif self._rate < configured and now - self._window_start >= 2.0:
            await self._set_rate(min(configured, self._rate * 1.05))
            self._window_start = now

    async def _raise_rate(self, now: float) -> None:
        if self._slow_start or self._ceiling is None:
            target = self._rate * 2.0
        else:
            hold = HOLD * self._ceiling
            if self._rate < hold:
                target = min(self._rate * 1.1, hold)
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
        burst = self.limits.burst / 2 if not self._adaptive else min(self.limits.burst, rate)
        burst = max(1.0, float(burst))
        return AsyncLimiter(max_rate=burst, time_period=burst / rate)

    async def _set_rate(self, rate: float) -> None:
        limiter = self._new_limiter(rate)
        # Start the new bucket full: no burst right after a change. Filling an empty bucket never
        # suspends, so no other task can see the new limiter half set up.
        await limiter.acquire(limiter.max_rate)
        log.info("%s: rate %.2f -> %.2f req/s, bucket emptied", self.name, self._rate, rate)
        self._rate = rate
        self._limiter = limiter

    def _excerpt_redactor(self, path: str, params: Mapping[str, Any] | None) -> Callable[[str], str]:
        """The secrets redactor, plus the values this request sent under credential names (unknown
        to it): a careless server may echo them into its error body. Built only for a message."""
        sent = _credential_values(path, params)
        if not sent:
            return self._redact
        also = _Redactor(sent)
        return lambda text: also(self._redact(text))

    def _show_path(self, path: str, params: Mapping[str, Any] | None) -> str:
        """Path for messages: query values are shown (a cursor or a filter helps to understand an
        error) except under credential-like keys (token, signature, api_key, ...); every known
        secret is redacted wherever it appears. Built only when a message is."""
        path, _, query = path.partition("?")
        pairs: list[str] = []
        for part in query.split("&"):
            if part:
                key, has_value, _value = part.partition("=")
                # the path's own query arrives encoded: judge the key by its decoded name
                hide = has_value and _names_a_credential(unquote_plus(key))
                pairs.append(f"{key}={_REDACTED}" if hide else part)
        for key, value in (params or {}).items():
            pairs.append(f"{key}={_REDACTED if _names_a_credential(str(key)) else value}")
        return self._redact(f"{path}?{'&'.join(pairs)}" if pairs else path)
