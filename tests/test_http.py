"""HostClient behaviour, specified against a scripted aiohttp server on real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from migrator.http import (
    AmbiguousOutcome,
    AuthError,
    BasicAuth,
    HostClient,
    HostLimits,
    HttpError,
    ProtocolError,
    Rejection,
    RequestStats,
    Response,
    is_loopback,
    parse_retry_after,
)

Action = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN = "s3cr3t-t0ken-value"
PASSWORD = "hunter2-password"
EXTRA_SECRET = "extra-secret-xyz"


# ---------------------------------------------------------------- scripted server


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        if isinstance(body, str | bytes):
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response({"ok": True} if body is None else body, status=status, headers=headers)

    return act


def drop() -> Action:
    """Close the connection without answering."""

    async def act(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.01)
        return web.Response()

    return act


def truncate() -> Action:
    """Promise 100 bytes, send 10, hang up."""

    async def act(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100", "Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"partial"')
        assert request.transport is not None
        request.transport.close()
        return resp

    return act


def stall(seconds: float) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"late": True})

    return act


def echo_credentials(status: int) -> Action:
    """A careless server that echoes the credentials it was sent into its error body."""

    async def act(request: web.Request) -> web.StreamResponse:
        body = f"denied: authorization={request.headers.get('Authorization')} key={request.headers.get('X-Api-Key')} note={EXTRA_SECRET}"
        return web.Response(status=status, text=body)

    return act


class ScriptedServer:
    """Per path: a list of actions used in order (the last one repeats); every hit is timestamped."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Action]] = {}
        self.hits: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (monotonic, wall)
        self.queries: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.statuses: list[tuple[float, int]] = []  # (monotonic, status) of every answer
        self.url = ""
        self._runner: web.AppRunner | None = None

    def script(self, path: str, *actions: Action) -> None:
        self.scripts[path] = list(actions)

    def count(self, path: str) -> int:
        return len(self.hits[path])

    @property
    def all_hits(self) -> list[float]:
        return sorted(t for hits in self.hits.values() for t, _ in hits)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        n = len(self.hits[path])
        self.hits[path].append((time.monotonic(), time.time()))
        self.queries[path].append(dict(request.query))
        actions = self.scripts.get(path) or [reply()]
        resp = await actions[min(n, len(actions) - 1)](request)
        self.statuses.append((time.monotonic(), resp.status))
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    srv = ScriptedServer()
    await srv.start()
    yield srv
    await srv.stop()


def fast_limits(**overrides: Any) -> HostLimits:
    """Generous rate and tiny backoff so retry tests run in milliseconds."""
    base: dict[str, Any] = dict(rate=1000.0, burst=100, concurrency=16, timeout=2.0, max_retries=4)
    base |= dict(backoff_base=0.01, backoff_cap=0.05)
    return HostLimits(**(base | overrides))


def client(srv: ScriptedServer, path_prefix: str = "", **overrides: Any) -> HostClient:
    return HostClient(srv.url + path_prefix, limits=fast_limits(**overrides), name="test")


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_transient_status_is_retried_until_success(server: ScriptedServer, status: int) -> None:
    server.script("/flaky", reply(status), reply(status), reply(200, {"n": 1}))
    async with client(server) as http:
        resp = await http.request("GET", "/flaky")
    assert resp.json() == {"n": 1}
    assert server.count("/flaky") == 3
    assert http.stats.retries == 2
    assert http.stats.status_counts == {status: 2, 200: 1}


@pytest.mark.parametrize("failure", [drop(), truncate(), stall(0.6)], ids=["drop", "truncate", "timeout"])
async def test_transport_failures_are_retried_for_idempotent_requests(
    server: ScriptedServer, failure: Action
) -> None:
    server.script("/shaky", failure, reply(200, {"ok": 1}))
    async with client(server, timeout=0.2) as http:
        resp = await http.request("GET", "/shaky")
    assert resp.status == 200
    assert server.count("/shaky") == 2
    assert http.stats.errors == 1 and http.stats.retries == 1


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_other_client_errors_are_not_retried(server: ScriptedServer, status: int) -> None:
    server.script("/bad", reply(status, "nope"))
    async with client(server) as http:
        with pytest.raises(HttpError) as info:
            await http.request("GET", "/bad")
    assert type(info.value) is HttpError
    assert info.value.status == status and info.value.body_excerpt == "nope"
    assert server.count("/bad") == 1
    assert http.stats.retries == 0


async def test_retries_exhausted_reports_attempts_and_last_status(server: ScriptedServer) -> None:
    server.script("/down", reply(503))
    async with client(server, max_retries=3) as http:
        with pytest.raises(HttpError) as info:
            await http.request("GET", "/down")
    assert info.value.status == 503
    assert "4 attempts" in str(info.value)
    assert server.count("/down") == 4


async def test_accepted_statuses_are_returned(server: ScriptedServer) -> None:
    server.script("/maybe", reply(404, {"error": "missing"}))
    async with client(server) as http:
        resp = await http.request("GET", "/maybe", accept=(200, 404))
    assert resp.status == 404 and resp.json() == {"error": "missing"}
    assert resp.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------- auth and secrets


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_raise_auth_error_without_leaking_secrets(
    server: ScriptedServer, status: int
) -> None:
    server.script("/me", echo_credentials(status))
    http = HostClient(
        server.url,
        limits=fast_limits(),
        headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Key": PASSWORD},
        secrets=[EXTRA_SECRET],
    )
    async with http:
        with pytest.raises(AuthError) as info:
            await http.request("GET", "/me", params={"access_token": TOKEN})
    exc = info.value
    assert exc.status == status and server.count("/me") == 1
    assert server.queries["/me"][0] == {"access_token": TOKEN}  # the server did get it
    for text in (str(exc), repr(exc), exc.body_excerpt, exc.path, repr(http)):
        assert TOKEN not in text and PASSWORD not in text and EXTRA_SECRET not in text
    assert "***" in exc.body_excerpt
    assert exc.path == "/me?access_token=***"


async def test_basic_auth_password_is_redacted(server: ScriptedServer) -> None:
    server.script("/me", echo_credentials(401))
    async with HostClient(server.url, limits=fast_limits(), auth=("api-user", PASSWORD)) as http:
        with pytest.raises(AuthError) as info:
            await http.request("GET", "/me")
    # The server echoed "Basic <base64(user:password)>"; neither form survives.
    encoded = base64.b64encode(f"api-user:{PASSWORD}".encode()).decode()
    assert "authorization=***" in info.value.body_excerpt
    assert encoded not in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.parametrize("spelling", ["tuple", "aiohttp", "ours"])
async def test_basic_auth_is_sent_in_any_of_its_spellings(server: ScriptedServer, spelling: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp.BasicAuth is deprecated, still accepted
        auth: Any = {
            "tuple": ("api-user", PASSWORD),
            "aiohttp": aiohttp.BasicAuth("api-user", PASSWORD),
            "ours": BasicAuth("api-user", PASSWORD),
        }[spelling]
    seen: list[str | None] = []

    async def remember(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    server.script("/me", remember)
    async with HostClient(server.url, limits=fast_limits(), auth=auth) as http:
        await http.request("GET", "/me")
    assert seen == ["Basic " + base64.b64encode(f"api-user:{PASSWORD}".encode()).decode()]


def test_plain_http_is_refused_for_non_loopback_hosts() -> None:
    for url in ("http://lms.example.com/api", "http://10.0.0.5", "http://[2001:db8::1]/x"):
        with pytest.raises(ValueError, match="https"):
            HostClient(url, limits=HostLimits())
    for url in ("http://127.0.0.1:8080", "http://127.5.0.1", "http://localhost/api", "http://[::1]:9"):
        HostClient(url, limits=HostLimits())
    HostClient("https://lms.example.com/api/v2", limits=HostLimits())
    with pytest.raises(ValueError):
        HostClient("https://user:pw@lms.example.com", limits=HostLimits())
    with pytest.raises(ValueError):
        HostClient("ftp://lms.example.com", limits=HostLimits())


LOOPBACK = ("127.0.0.1", "127.5.0.1", "localhost", "LocalHost", "localhost.", "[::1]", "::1", "[::ffff:127.0.0.1]")
NOT_LOOPBACK = ("localhost.evil.com", "localhostx", "evil-localhost", "10.0.0.5", "lms.example.com", "[2001:db8::1]")


@pytest.mark.parametrize("host", LOOPBACK + NOT_LOOPBACK)
def test_the_client_and_the_plan_agree_on_what_is_loopback(host: str) -> None:
    from migrator.plan import PlanError, check_url

    url = f"http://{host if ':' not in host or host.startswith('[') else f'[{host}]'}:8080/api"
    if host in LOOPBACK:
        HostClient(url, limits=HostLimits())
        check_url(url, "target.base_url")
        assert is_loopback(host)
        return
    assert not is_loopback(host) and not is_loopback(None) and not is_loopback("")
    with pytest.raises(ValueError, match="https"):
        HostClient(url, limits=HostLimits())
    with pytest.raises(PlanError, match="`target.base_url`: .*https://"):
        check_url(url, "target.base_url")


def test_the_ledger_redacts_with_the_same_redactor_as_the_client() -> None:
    from migrator.ledger import Ledger

    secret = "s3cr3t key/with+chars"
    ledger = Ledger(":memory:", redact=[secret])
    encoded = "s3cr3t%20key%2Fwith%2Bchars"  # how it looks once it travelled in a query string
    ledger.mark_dead("users", "u1", "target_rejected", f"GET /x?k={encoded}: {secret}", 400, {"echo": encoded})
    (dead,) = ledger.dead_letters()
    assert dead.message == "GET /x?k=***: ***" and dead.payload == '{"echo":"***"}'


async def test_a_validation_hook_turns_a_200_into_an_error_without_retrying(server: ScriptedServer) -> None:
    server.script("/enroll", reply(200, {"error": True, "message": f"Unknown key 'colour' for {TOKEN}"}))
    server.script("/fine", reply(200, {"error": False}))

    def soft_errors(resp: Response) -> Rejection | None:
        body = resp.json()
        return Rejection(body["message"], error_class="unknown_field") if body.get("error") else None

    async with HostClient(server.url, limits=fast_limits(), secrets=[TOKEN], validate=soft_errors) as http:
        assert (await http.request("GET", "/fine")).json() == {"error": False}
        with pytest.raises(HttpError) as info:
            await http.request("POST", "/enroll", json={}, idempotent=False)
    err = info.value
    assert str(err) == "POST /enroll: HTTP 200: Unknown key 'colour' for ***"
    assert (err.status, err.error_class) == (200, "unknown_field") and not isinstance(err, AuthError)
    assert server.count("/enroll") == 1 and http.stats.retries == 0


async def test_base_url_path_prefix_and_params_are_kept(server: ScriptedServer) -> None:
    async with client(server, path_prefix="/api/v2/") as http:
        await http.request("GET", "/users", params={"page": 2})
        await http.request("POST", "users", json={"name": "Ada"}, accept=(200,))
    assert server.count("/api/v2/users") == 2
    assert server.queries["/api/v2/users"][0] == {"page": "2"}


async def test_invalid_json_raises_protocol_error_naming_the_request(server: ScriptedServer) -> None:
    server.script("/html", reply(200, f"<html>oops {EXTRA_SECRET}</html>"))
    async with HostClient(server.url, limits=fast_limits(), secrets=[EXTRA_SECRET]) as http:
        resp = await http.request("GET", "/html", params={"cursor": "abc"})
    with pytest.raises(ProtocolError) as info:
        resp.json()
    assert "GET /html?cursor=abc" in str(info.value)  # a cursor is no secret, and it helps to find the page
    assert EXTRA_SECRET not in info.value.body_excerpt and "<html>oops ***" in info.value.body_excerpt


# ---------------------------------------------------------------- what error messages show of a query


@pytest.mark.parametrize("how", ["params", "path"])
async def test_query_values_that_are_not_secrets_are_shown_in_errors(server: ScriptedServer, how: str) -> None:
    server.script("/user", reply(404, "no such page"))
    async with client(server) as http:
        with pytest.raises(HttpError) as info:
            if how == "params":
                await http.request("GET", "/user", params={"activeValue": "all", "startIndex": 100})
            else:
                await http.request("GET", "/user?activeValue=all&startIndex=100")
    assert str(info.value) == "GET /user?activeValue=all&startIndex=100: HTTP 404: no such page"
    assert info.value.path == "/user?activeValue=all&startIndex=100"


async def test_values_under_credential_names_are_hidden_even_when_unknown_as_secrets(server: ScriptedServer) -> None:
    server.script("/files", reply(404))
    hidden = {
        "token": "t-1", "accessToken": "t-2", "X-Amz-Signature": "t-3", "api_key": "t-4", "APIKey": "t-5",
        "sig": "t-6", "code": "t-7", "client_secret": "t-8", "Password": "t-9", "auth": "t-10",
    }  # fmt: skip
    shown = {"author": "ada", "keyword": "safety", "design": "flat", "page": "3"}
    async with client(server) as http:  # the client knows none of these values as secrets
        with pytest.raises(HttpError) as info:
            await http.request("GET", "/files?X-Amz-Credential=t-11", params=hidden | shown)
    text = str(info.value)
    assert "X-Amz-Credential=***" in text
    for key in hidden:
        assert f"{key}=***" in text
    for key, value in shown.items():
        assert f"{key}={value}" in text
    assert "t-" not in text.replace("X-Amz-", "").replace("client_", "")


# ---------------------------------------------------------------- Retry-After pauses the host


async def _pause_scenario(server: ScriptedServer, retry_after: str) -> tuple[HostClient, float, float]:
    """One request gets 429 + Retry-After while ten others are queued in the limiter."""
    server.script("/limited", reply(429, "slow down", {"Retry-After": retry_after}), reply(200))
    http = client(server, rate=20.0, burst=1)
    async with http:
        first = asyncio.create_task(http.request("GET", "/limited"))
        await asyncio.sleep(0)  # let it take the only burst token
        others = [http.request("GET", f"/other/{i}") for i in range(10)]
        await asyncio.gather(first, *others)
    mono_429, wall_429 = server.hits["/limited"][0]
    return http, mono_429, wall_429


async def test_retry_after_seconds_pauses_every_request_on_the_host(server: ScriptedServer) -> None:
    http, t429, _ = await _pause_scenario(server, "1")
    later = [t for t in server.all_hits if t > t429]
    assert len(later) == 11  # the retry and all ten queued requests
    assert min(later) >= t429 + 1.0
    assert http.stats.rate_limited == 1 and http.stats.wait_seconds >= 1.0


async def test_retry_after_http_date_pauses_every_request_on_the_host(server: ScriptedServer) -> None:
    until = time.time() + 2  # HTTP-dates have 1 s resolution: the pause ends at floor(until)
    http, t429, _ = await _pause_scenario(server, email.utils.formatdate(until, usegmt=True))
    later_wall = [w for hits in server.hits.values() for t, w in hits if t > t429]
    assert len(later_wall) == 11
    assert min(later_wall) >= int(until) - 0.01
    assert http.stats.rate_limited == 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(email.utils.formatdate(1000.0, usegmt=True), now=990.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=2e9) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_retry_after_is_capped(server: ScriptedServer) -> None:
    server.script("/huge", reply(503, headers={"Retry-After": "86400"}), reply(200))
    async with client(server, retry_after_max=0.2) as http:
        started = time.monotonic()
        await http.request("GET", "/huge")
    assert 0.2 <= time.monotonic() - started < 1.0


# ---------------------------------------------------------------- rate limiting


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] < t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_fixed_rate_allows_at_most_rate_plus_burst_in_any_second(server: ScriptedServer) -> None:
    rate, burst = 20.0, 5
    async with client(server, rate=rate, burst=burst, concurrency=32) as http:

        async def worker(i: int) -> None:
            while True:
                await http.request("GET", f"/load/{i}")

        # Cancelling 32 requests queued in the limiter must leave nothing behind.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                await asyncio.gather(*(worker(i) for i in range(32)))
    hits = server.all_hits
    assert max_in_window(hits) <= rate + burst
    # ...and the limiter is not needlessly slow: 3 s of rate plus the half burst it allows itself
    # (the other half is headroom for jitter on the way to the server), give or take the last wave.
    assert len(hits) >= burst / 2 + rate * 3 - 2


async def test_adaptive_rate_converges_below_an_unknown_limit(server: ScriptedServer) -> None:
    limit = 40
    served: list[float] = []

    async def limited(request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        while served and served[0] < now - 1.0:
            served.pop(0)
        if len(served) >= limit:
            return web.Response(status=429, text="too many")  # no Retry-After: the limit is unknown
        served.append(now)
        return web.json_response({"ok": True})

    server.script("/adaptive", limited)
    http = client(
        server, rate=None, adaptive_start=80.0, burst=10, concurrency=16, max_retries=50,
        backoff_base=0.05, backoff_cap=0.5,
    )  # fmt: skip
    async with http:
        start = time.monotonic()

        async def worker() -> None:
            while True:
                await http.request("GET", "/adaptive")

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(4.5):
                await asyncio.gather(*(worker() for _ in range(16)))
    assert http.current_rate is not None and 10 <= http.current_rate < limit
    late = [status for t, status in server.statuses if t > start + 2.5]
    assert len(late) >= 30
    assert late.count(429) / len(late) < 0.1
    assert http.stats.rate_limited > 0  # it did have to find the limit


async def test_unlimited_host_is_bounded_only_by_concurrency(server: ScriptedServer) -> None:
    in_flight, most = 0, 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.json_response({"ok": True})

    server.script("/open", slow)
    # burst 1 would hold a limited host to one request per 1/rate s; an unlimited one has no bucket
    async with client(server, rate="unlimited", burst=1, concurrency=8) as http:
        started = time.monotonic()
        await asyncio.gather(*(http.request("GET", "/open") for _ in range(80)))
        elapsed = time.monotonic() - started
    assert most == 8  # the concurrency cap still holds
    assert elapsed < 80 * 0.02 / 4  # ten waves of 8, not eighty requests one after another
    assert http.current_rate is None and http.stats.wait_seconds == 0


async def test_unlimited_host_that_answers_429_starts_adapting(server: ScriptedServer) -> None:
    server.script("/busy", reply(200), reply(429), reply(429), reply(200))
    async with client(server, rate="unlimited", adaptive_start=5.0) as http:
        for _ in range(3):
            await http.request("GET", "/busy")
    assert server.count("/busy") == 5  # the two 429s were retried, not failed
    assert http.current_rate is not None and http.current_rate <= 5.0  # a limit is now kept
    assert http.stats.rate_limited == 2


async def test_rate_is_shared_by_all_streams(server: ScriptedServer) -> None:
    reads, writes = RequestStats(), RequestStats()
    async with client(server, rate=10.0, burst=2) as http:
        started = time.monotonic()
        await asyncio.gather(
            *(http.request("GET", "/r", stats=reads) for _ in range(6)),
            *(http.request("POST", "/w", json={}, stats=writes) for _ in range(6)),
        )
        elapsed = time.monotonic() - started
    assert elapsed >= (12 - 2) / 10 - 0.02  # one bucket for both streams
    assert reads.requests == writes.requests == 6 and http.stats.requests == 12


# ---------------------------------------------------------------- non-idempotent writes


@pytest.mark.parametrize(
    "failure",
    [reply(500), reply(503), drop(), truncate(), stall(0.6)],
    ids=["500", "503", "drop", "truncate", "timeout"],
)
async def test_non_idempotent_write_is_not_resent_when_it_may_have_applied(
    server: ScriptedServer, failure: Action
) -> None:
    server.script("/certificates", failure, reply(201))
    async with client(server, timeout=0.2) as http:
        with pytest.raises(AmbiguousOutcome) as info:
            await http.request("POST", "/certificates", json={"user": 1}, accept=(201,), idempotent=False)
    assert server.count("/certificates") == 1
    assert "may have been applied" in str(info.value)
    assert http.stats.retries == 0 and http.stats.requests == 1


async def test_non_idempotent_put_is_not_silently_resent_by_aiohttp(server: ScriptedServer) -> None:
    # aiohttp itself resends PUT once after a dropped keep-alive connection; HostClient turns that off.
    server.script("/things/1", reply(200), drop(), reply(200))
    async with client(server) as http:
        await http.request("PUT", "/things/1", json={}, idempotent=False)  # opens a keep-alive connection
        with pytest.raises(AmbiguousOutcome):
            await http.request("PUT", "/things/1", json={}, idempotent=False)
    assert server.count("/things/1") == 2


@pytest.mark.parametrize("status", [429, 408])
async def test_non_idempotent_write_is_retried_when_surely_not_applied(
    server: ScriptedServer, status: int
) -> None:
    server.script("/certificates", reply(status, headers={"Retry-After": "0.1"}), reply(201, {"id": 9}))
    async with client(server) as http:
        resp = await http.request("POST", "/certificates", json={}, accept=(201,), idempotent=False)
    assert resp.json() == {"id": 9}
    assert server.count("/certificates") == 2
    assert http.stats.retries == 1


async def test_non_idempotent_write_is_retried_when_it_cannot_connect(server: ScriptedServer) -> None:
    url = server.url
    await server.stop()  # nothing listens on that port any more
    async with HostClient(url, limits=fast_limits(max_retries=2)) as http:
        with pytest.raises(HttpError) as info:
            await http.request("POST", "/x", json={}, idempotent=False)
    assert not isinstance(info.value, AmbiguousOutcome)
    assert info.value.status is None and "3 attempts" in str(info.value)
    await server.start()  # for the fixture's teardown


# ---------------------------------------------------------------- counters and lifecycle


async def test_counters_add_up_per_stream_and_per_host(server: ScriptedServer) -> None:
    server.script("/a", reply(500), reply(429, headers={"Retry-After": "0"}), reply(200))
    server.script("/b", drop(), reply(200))
    server.script("/c", reply(404))
    a, b = RequestStats(), RequestStats()
    async with client(server) as http:
        await http.request("GET", "/a", stats=a)
        await http.request("GET", "/b", stats=b)
        with pytest.raises(HttpError):
            await http.request("GET", "/c", stats=b)
    assert a.as_dict() | {"wait_seconds": 0} == {
        "requests": 3, "retries": 2, "rate_limited": 1, "errors": 0, "wait_seconds": 0,
        "status_counts": {200: 1, 429: 1, 500: 1},
    }  # fmt: skip
    assert (b.requests, b.retries, b.errors, b.status_counts) == (3, 1, 1, {200: 1, 404: 1})
    host = http.stats
    assert host.requests == a.requests + b.requests == 6
    assert host.requests == sum(host.status_counts.values()) + host.errors
    assert host.retries == 3 and host.rate_limited == 1
    assert host.wait_seconds >= a.wait_seconds + b.wait_seconds - 1e-9


async def test_no_tasks_outlive_the_client(server: ScriptedServer) -> None:
    before = asyncio.all_tasks()
    async with client(server, rate=None) as http:
        await asyncio.gather(*(http.request("GET", f"/t/{i}") for i in range(20)))
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
    with pytest.raises(RuntimeError):
        await http.request("GET", "/closed")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        HostLimits(rate=0)
    with pytest.raises(ValueError):
        HostLimits(rate="unbounded")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HostLimits(adaptive_min=50, adaptive_start=20)
