"""One polite, retrying HTTP client per (host, credential): :class:`HostClient`.

A thin pipeline over the parts of this package: auth (:mod:`.auth`), the host's pause and rate
(:mod:`.rate`), one attempt on the wire (:mod:`.transport`), the retry policy (:mod:`.retry`), an
optional response-validation hook, and messages that never show a secret (:mod:`.redact`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import orjson
from yarl import URL

from migrator.http.auth import Auth, BasicAuth, LoginToken, TokenState
from migrator.http.errors import AmbiguousOutcome, AuthError, HostUnreachable, HttpError, ProtocolError
from migrator.http.limits import HostLimits
from migrator.http.net import is_loopback
from migrator.http.rate import HostRate
from migrator.http.redact import PUBLIC_HEADERS, Redactor, excerpt, excerpt_redactor, show_path
from migrator.http.retry import (
    AUTH_STATUSES,
    MAX_THROTTLED,
    NOT_APPLIED_STATUSES,
    PAUSING_STATUSES,
    RETRYABLE_STATUSES,
    backoff_delay,
    retry_budget,
    retry_delay,
)
from migrator.http.stats import RequestStats
from migrator.http.transport import Response, TransportFailure, send

__all__ = ["HostClient", "Rejection", "Validator"]

log = logging.getLogger("migrator.http")

_LOGIN_ANSWERS = (200, 201, 400, 401, 403)  # a login refused says so with 400 (Absorb) as well as 401/403


class Rejection(NamedTuple):
    """A validation hook's verdict on an answer whose status looked fine (NexPort reports errors
    inside 200 bodies). ``auth=True``: the body says the credential was refused (NexPort
    ``error_code`` 4), handled like a 401: one re-login and one retry, then :class:`AuthError`."""

    reason: str
    error_class: str = "target_rejected"
    auth: bool = False


Validator = Callable[[Response], Rejection | None]


class HostClient:
    """Shared HTTP client for one (base URL, credential): rate, concurrency, retries, pauses, auth.

    Every attempt passes three gates before it is sent:

    1. **Concurrency** -- a semaphore of ``limits.concurrency`` slots (the connection pool has the
       same size, so a slot always has a connection). Slots are released during backoff sleeps.
       A host with ``rate="unlimited"`` (and no pause in force) skips the semaphore and the two
       gates below: the pool's ``concurrency`` connections are then the cap.
    2. **Host pause** and 3. **Rate** -- see :class:`~migrator.http.rate.HostRate`: a
       ``Retry-After`` pauses the whole host; a leaky bucket of capacity ``burst`` drains at
       ``rate`` per second, fixed or adapting (AIMD) when the limit is unknown.

    Failures: 408/429/500/502/503/504, timeouts and connection errors are retried up to
    ``max_retries`` times with full-jitter exponential backoff (``uniform(0, min(cap,
    base * 2**n))``); a ``Retry-After`` replaces the backoff. 401/403 raise :class:`AuthError`,
    other statuses outside ``accept`` raise :class:`HttpError` at once. Redirects are not
    followed, so credentials never travel to another host.

    Auth (``auth=``): a fixed header, Basic (or a ``(login, password)`` tuple), both precomputed
    into the session's headers, or a :class:`~migrator.http.auth.LoginToken`: logged in on first
    use, renewed single-flight before it expires or when a request sent with the current token
    meets a 401 (then that request is retried once; a second 401 is an :class:`AuthError`).
    Every token is redacted from messages once known.

    ``validate=``: a hook that sees each accepted answer and may turn it into an error
    (:class:`Rejection`); it runs only when given.

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
        auth: Auth | aiohttp.BasicAuth | tuple[str, str] | None = None,
        secrets: Iterable[str] = (),
        name: str | None = None,
        validate: Validator | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got scheme {url.scheme!r}")
        if url.user or url.password:
            raise ValueError("base_url must not carry credentials; pass auth= or headers= instead")
        if url.scheme == "http" and not is_loopback(url.host):
            raise ValueError(f"refusing plain http:// to non-loopback host {url.host}; use https://")
        self.base_url = str(url.with_query(None).with_fragment(None)).rstrip("/")
        self.name = name or url.host
        self.limits = limits
        self.stats = RequestStats()

        if isinstance(auth, aiohttp.BasicAuth):  # a namedtuple of three: test it before plain tuples
            auth = BasicAuth(auth.login, auth.password)
        elif isinstance(auth, tuple):
            auth = BasicAuth(*auth)
        self._headers = dict(headers or {})
        secret_values = list(secrets)
        self._token: TokenState | None = None  # login-token auth only
        if auth is not None:
            self._headers.update(auth.headers())
            secret_values += auth.secrets()
            if isinstance(auth, LoginToken):
                self._token = TokenState(auth)
        secret_values += [v for k, v in self._headers.items() if k.lower() not in PUBLIC_HEADERS]
        # "Bearer <token>", "Basic <b64>": the bare credential may be echoed without its scheme.
        secret_values += [p[1] for v in secret_values if len(p := v.split(None, 1)) == 2]
        self._redact = Redactor(secret_values)
        self._validate = validate

        self._session: aiohttp.ClientSession | None = None
        self._reached = False  # some attempt got a connection: failing to connect now is an outage
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._rate = HostRate(limits, self.name)
        self._timeout = aiohttp.ClientTimeout(total=limits.timeout)
        # a request without its own headers or body type rides on the session's headers as they are
        self._json_needs_type = not any(k.lower() == "content-type" for k in self._headers)
        self._urls: dict[str, URL] = {}  # path → URL: building a yarl URL per request is not free

    def __repr__(self) -> str:
        rate = self._rate
        return f"<HostClient {self.name} {self.base_url} rate={rate.rate:.2f}/s ({rate.mode})>"

    @property
    def current_rate(self) -> float | None:
        """Requests per second the limiter currently allows (None: no limit)."""
        return None if self._rate.limiter is None else self._rate.rate

    @property
    def paused_until(self) -> float:
        """``loop.time()`` until which the host is paused by a Retry-After (0 if never)."""
        return self._rate.paused_until

    async def __aenter__(self) -> HostClient:
        connector = aiohttp.TCPConnector(limit=self.limits.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, raise_for_status=False, timeout=self._timeout
        )
        # aiohttp silently resends PUT/DELETE once when a kept-alive connection drops; that would hide
        # a resend of a non-idempotent write and skew the counters. Retries are ours alone.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        token = self._token
        if token is not None and token.token is not None:
            self._install_token(token.spec, token.token)  # a client reopened keeps its token
        self._rate.start(asyncio.get_running_loop())
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
            resp = await self.request(
                method, path, params=params, json=json, idempotent=idempotent, stats=stats
            )
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
                delay = backoff_delay(self.limits, attempt)
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
        authenticate: bool = True,
    ) -> Response:
        """Send ``method base_url+path``; return the Response once its status is in ``accept``.
        ``authenticate=False`` sends it without the login token (the login call itself)."""
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
        rate = self._rate
        token = self._token if authenticate else None
        send_params = params

        attempt = throttled = 0
        sent_with = 0  # the login generation the attempt carried (login-token auth only)
        reauthenticated = False
        failing_since: float | None = None  # loop.time() the first failed attempt started
        while True:
            attempt += 1
            if token is not None:
                if token.expires_at <= loop.time():  # never logged in, or about to expire
                    await token.renew(token.generation, self._log_in, loop.time)
                sent_with = token.generation
                if token.spec.query_param is not None:
                    send_params = {**(params or {}), token.spec.query_param: token.token}
            if rate.limiter is None and rate.paused_until <= (started := loop.time()):
                # no rate limit and no pause: nothing to queue for but a connection, and the pool
                # holds `concurrency` of them, so the pool alone keeps the cap
                waited = 0.0
                outcome = await send(session, method, url, send_params, data, req_headers, self)
            else:
                async with self._slots:
                    waited = await rate.gate(loop)
                    started = loop.time()
                    outcome = await send(session, method, url, send_params, data, req_headers, self)
            for c in counters:
                c.wait_seconds += waited
                c.requests += 1

            if isinstance(outcome, TransportFailure):
                shown = self.show_path(path, send_params)
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
                reason, body_excerpt = outcome.reason, ""
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
                if rate.adaptive or status in PAUSING_STATUSES or rate.rate < rate.configured:
                    retry_after = await rate.note_status(loop, status, outcome.headers, started)
                rejected: Rejection | None = None
                if status in accept:
                    outcome.method, outcome.path = method, path
                    # the message path (query values hidden, secrets redacted) is built only if needed
                    outcome._client, outcome._params = self, send_params
                    if self._validate is None or (rejected := self._validate(outcome)) is None:
                        return outcome
                refused = status == 401 or (rejected is not None and rejected.auth)
                if refused and token is not None and not reauthenticated:
                    # the token may have expired early or been superseded by another login: renew
                    # it (once for all the requests refused with it) and try this request once more
                    reauthenticated = True
                    log.info("%s: %s %s -> HTTP %d, logging in again", self.name, method, path, status)
                    await token.renew(sent_with, self._log_in, loop.time)
                    for c in counters:
                        c.retries += 1
                    attempt -= 1
                    continue
                shown = self.show_path(path, send_params)
                redact = self.excerpt_redactor(path, send_params)
                body_excerpt = excerpt(outcome.body, redact)
                if rejected is not None:
                    raise (AuthError if rejected.auth else HttpError)(
                        f"{method} {shown}: HTTP {status}: {redact(rejected.reason)}",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=body_excerpt,
                        host=self.name,
                        error_class=rejected.error_class,
                    )
                reason = f"HTTP {status}"
                if status in AUTH_STATUSES:
                    raise AuthError(
                        f"{method} {shown}: {reason} (credential rejected): {body_excerpt[:120]}",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=body_excerpt,
                        host=self.name,
                    )
                if status not in RETRYABLE_STATUSES:
                    raise HttpError(
                        f"{method} {shown}: {reason}: {body_excerpt[:120]}",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=body_excerpt,
                    )
                if not idempotent and status not in NOT_APPLIED_STATUSES:
                    raise AmbiguousOutcome(
                        f"{method} {shown}: {reason}; the request may have been applied",
                        status=status,
                        method=method,
                        path=shown,
                        body_excerpt=body_excerpt,
                    )

            if status == 429 and throttled < MAX_THROTTLED:
                # "slow down" is not a failure: it does not use up the retry budget
                throttled += 1
                attempt -= 1
            if failing_since is None:
                failing_since = started
            cannot_connect = isinstance(outcome, TransportFailure) and outcome.surely_not_sent
            never_reached = cannot_connect and not self._reached
            if attempt > retry_budget(self.limits, never_reached=never_reached):
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
                    body_excerpt=body_excerpt,
                )
            for c in counters:
                c.retries += 1
            if retry_after:
                # The host pause is the wait; the gate will hold this attempt (and everyone else).
                log.info("%s: %s %s -> %s, host paused %.1fs", self.name, method, shown, reason, retry_after)
                continue
            delay = retry_delay(self.limits, attempt, never_reached=never_reached)
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

    # ------------------------------------------------------------------ login token

    async def _log_in(self) -> tuple[str, float | None]:
        """POST the login route; install the token it answers. Called under the token's lock."""
        state = self._token
        assert state is not None
        spec = state.spec
        resp = await self.request(
            "POST", spec.path, json=dict(spec.body), accept=_LOGIN_ANSWERS, authenticate=False
        )
        shown = self.show_path(resp.path, None)
        if resp.status not in (200, 201):
            body_excerpt = excerpt(resp.body, self._redact)
            raise AuthError(
                f"POST {shown}: login refused (HTTP {resp.status}): {body_excerpt[:120]}",
                status=resp.status,
                method="POST",
                path=shown,
                body_excerpt=body_excerpt,
                host=self.name,
            )
        token, lifetime = spec.read(resp.json())
        if token is None:
            where = f" at `{spec.token_field}`" if spec.token_field else " (expected a JSON string)"
            raise ProtocolError(
                f"POST {shown}: HTTP {resp.status} login answer holds no token{where}",
                status=resp.status,
                method="POST",
                path=shown,
                host=self.name,
            )
        self._redact.add(token)
        self._install_token(spec, token)
        log.info("%s: logged in at POST %s", self.name, shown)
        return token, lifetime

    def _install_token(self, spec: LoginToken, token: str) -> None:
        if spec.query_param is None and self._session is not None:
            # the session's default headers are copied into each request when it is prepared, so
            # every request sent from now on carries the new token at no cost per request
            self._session.headers[spec.header] = spec.header_value(token)

    # ------------------------------------------------------------------ messages

    def excerpt_redactor(self, path: str, params: Mapping[str, Any] | None) -> Callable[[str], str]:
        """The secrets redactor, plus the values this request sent under credential names (unknown
        to it): a careless server may echo them into its error body. Built only for a message."""
        return excerpt_redactor(self._redact, path, params)

    def show_path(self, path: str, params: Mapping[str, Any] | None) -> str:
        """Path for messages: query values are shown (a cursor or a filter helps to understand an
        error) except under credential-like keys (token, signature, api_key, ...); every known
        secret is redacted wherever it appears. Built only when a message is."""
        return show_path(path, params, self._redact)
