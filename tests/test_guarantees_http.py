"""HostClient guarantees the older tests left unmeasured: a pause holds requests already queued, no
burst follows a pause, the adaptive rate climbs, retries really back off, every form of a secret is
redacted, and plain http:// reaches loopback only. Real loopback HTTP; each test takes seconds at most.

Each test names the mutant of tests/mutants/mutants.toml it exists to kill.
"""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from migrator.http import AuthError, HostClient, HostLimits, HttpError
from migrator.http import retry as retry_policy
from migrator.plan import PlanError, parse_plan
from tests.guarantee_support import LoopbackServer, scripted


def limits(**overrides: object) -> HostLimits:
    base: dict[str, object] = dict(rate=1000.0, burst=100, concurrency=16, timeout=2.0, max_retries=4,
                                   backoff_base=0.01, backoff_cap=0.05)  # fmt: skip
    return HostLimits(**(base | overrides))  # type: ignore[arg-type]


def answer(status: int, headers: dict[str, str] | None = None):
    return lambda: web.json_response({"status": status}, status=status, headers=headers)


async def until_paused(http: HostClient) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while http.paused_until <= loop.time():
        assert loop.time() < deadline, "the 503 never paused the host"
        await asyncio.sleep(0.001)


# ---------------------------------------------------------------- a pause holds the whole host


async def test_a_503_pause_holds_requests_already_queued_in_the_limiter() -> None:
    # mutant pause-queued-slip. A 503 cuts no rate (unlike a 429), so nothing but the pause itself can
    # hold the ten requests that sit in the limiter when it arrives.
    async with LoopbackServer() as server:
        server.route("/first", scripted(answer(503, {"Retry-After": "1"}), answer(200)))
        http = HostClient(server.url, limits=limits(rate=20.0, burst=1), name="test")
        async with http:
            first = asyncio.create_task(http.request("GET", "/first"))
            await asyncio.sleep(0)  # it takes the only token; the others queue behind it
            queued = [asyncio.create_task(http.request("GET", f"/queued/{i}")) for i in range(10)]
            await asyncio.gather(first, *queued)
    t503 = server.times("/first")[0]
    later = [t for t in server.times() if t > t503]
    assert len(later) == 11  # the retry and the ten queued requests
    assert min(later) >= t503 + 1.0, f"a request left {min(later) - t503:.3f}s into a 1 s pause"


async def test_no_burst_follows_a_pause() -> None:
    # mutant pause-no-fresh-bucket. Rate 10/s with a bucket of 30: a bucket left to drain during the
    # pause would let 30 requests go the moment it ends. Emptied when the pause begins, it has earned
    # only what the rate allows over the pause (0.3 s = 3 requests; the bound leaves room for a slow loop).
    async with LoopbackServer() as server:
        server.route("/first", scripted(answer(503, {"Retry-After": "0.3"}), answer(200)))
        http = HostClient(server.url, limits=limits(rate=10.0, burst=60), name="test")
        async with http:
            first = asyncio.create_task(http.request("GET", "/first"))
            await until_paused(http)
            waiting = [asyncio.create_task(http.request("GET", f"/after/{i}")) for i in range(40)]
            await asyncio.sleep(0.6)  # the pause and a few requests after it
            for task in waiting:
                task.cancel()
            await asyncio.gather(first, *waiting, return_exceptions=True)
    t503 = server.times("/first")[0]
    after = [t for t in server.times() if t > t503]
    assert after, "nothing was sent after the pause"
    burst = [t for t in after if t <= after[0] + 0.1]
    assert len(burst) <= 12, f"{len(burst)} requests within 100 ms of the pause's end"


# ---------------------------------------------------------------- the adaptive rate climbs


async def test_adaptive_rate_climbs_quickly_when_the_server_has_no_limit() -> None:
    # mutant adaptive-never-rises. Slow start doubles the rate every clean half second.
    start_rate = 10.0
    async with LoopbackServer() as server:
        http = HostClient(server.url, limits=limits(rate=None, adaptive_start=start_rate, burst=10), name="test")
        async with http:
            began = time.monotonic()

            async def worker() -> None:
                while True:
                    await http.request("GET", "/open")

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3.0):
                    await asyncio.gather(*(worker() for _ in range(16)))
    assert http.current_rate is not None and http.current_rate >= 4 * start_rate
    last_second = [t for t in server.times("/open") if t >= began + 2.0]
    assert len(last_second) >= 2 * start_rate, f"only {len(last_second)} requests in the third second"


# ---------------------------------------------------------------- retries back off exponentially


async def test_retries_of_a_5xx_wait_exponentially_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    # mutants backoff-no-sleep and backoff-not-exponential. The jitter is pinned to its upper bound
    # so the gaps are exact: base * 2**n, capped.
    class UpperBound:
        @staticmethod
        def uniform(low: float, high: float) -> float:
            return high

    monkeypatch.setattr(retry_policy, "random", UpperBound)  # the jitter is drawn in the retry policy
    async with LoopbackServer() as server:
        server.route("/flaky", scripted(*[answer(500)] * 5, answer(200)))
        http = HostClient(server.url, limits=limits(backoff_base=0.04, backoff_cap=0.3, max_retries=6), name="test")
        async with http:
            await http.request("GET", "/flaky")
    hits = server.times("/flaky")
    gaps = [b - a for a, b in zip(hits, hits[1:], strict=False)]
    expected = [0.04, 0.08, 0.16, 0.3, 0.3]
    assert len(gaps) == len(expected)
    for n, (gap, want) in enumerate(zip(gaps, expected, strict=True), start=1):
        assert gap >= want * 0.95, f"retry {n} came {gap:.3f}s after the failure, backoff was {want}s"
    assert http.stats.wait_seconds == pytest.approx(sum(expected), abs=0.01)


# ---------------------------------------------------------------- secrets in every form


def _texts(err: HttpError) -> str:
    return " | ".join((str(err), repr(err), err.body_excerpt, err.path))


async def test_url_encoded_forms_of_a_secret_are_redacted() -> None:
    # mutant redact-no-url-forms. A password with + / = and a space reads differently in each encoding.
    secret = "k3y+w/th sp=ce"
    assert quote(secret, safe="") != secret and quote_plus(secret) != quote(secret, safe="")

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text=f"bad key {quote(secret, safe='')} (form: {quote_plus(secret)})")

    async with LoopbackServer() as server:
        server.route("/echo", echo)
        async with HostClient(server.url, limits=limits(), secrets=[secret], name="test") as http:
            with pytest.raises(HttpError) as caught:
                await http.request("GET", "/echo")
    text = _texts(caught.value)
    assert "bad key ***" in text
    for form in (secret, quote(secret, safe=""), quote_plus(secret)):
        assert form not in text


async def test_a_bare_credential_echoed_without_its_scheme_is_redacted() -> None:
    # mutant redact-no-bare-credential. The server quotes the token and the base64 of user:password
    # without their "Bearer " / "Basic " prefix.
    token = "tok-9f8e7d6c5b4a"
    password = "pw-3c2b1a0f9e8d"
    basic = base64.b64encode(f"api-user:{password}".encode()).decode()

    async def echo(request: web.Request) -> web.StreamResponse:
        bare = request.headers["Authorization"].split(None, 1)[1]
        return web.Response(status=401, text=f"credential {bare} refused")

    async with LoopbackServer() as server:
        server.route("/me", echo)
        for kwargs, credential in (
            ({"headers": {"Authorization": f"Bearer {token}"}}, token),
            ({"auth": ("api-user", password)}, basic),
        ):
            async with HostClient(server.url, limits=limits(), name="test", **kwargs) as http:  # type: ignore[arg-type]
                with pytest.raises(AuthError) as caught:
                    await http.request("GET", "/me")
            text = _texts(caught.value)
            assert "credential *** refused" in text
            assert credential not in text


async def test_a_password_or_key_echoed_in_plain_is_redacted() -> None:
    # mutants basic-password-not-redacted and header-secrets-not-redacted: the server decodes the Basic
    # credential and names the password, or repeats an API-key header.
    password, api_key = "pw-0a1b2c3d4e5f", "key-5f4e3d2c1b0a"

    async def echo(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        said = base64.b64decode(header.split()[1]).decode().split(":", 1)[1] if header else ""
        return web.Response(status=403, text=f"password {said} / key {request.headers.get('X-Api-Key')} refused")

    async with LoopbackServer() as server:
        server.route("/me", echo)
        for kwargs, secret in (({"auth": ("api-user", password)}, password), ({"headers": {"X-Api-Key": api_key}}, api_key)):
            async with HostClient(server.url, limits=limits(), name="test", **kwargs) as http:  # type: ignore[arg-type]
                with pytest.raises(AuthError) as caught:
                    await http.request("GET", "/me")
            assert secret not in _texts(caught.value)
            assert "***" in caught.value.body_excerpt


# ---------------------------------------------------------------- plain http only to loopback

LOOKALIKES = ("localhost.evil.com", "localhostx", "localhost-proxy.example.org", "127.0.0.1.nip.io")


@pytest.mark.parametrize("host", LOOKALIKES)
def test_hosts_that_merely_start_like_loopback_are_refused_plain_http_by_the_client(host: str) -> None:
    # mutant loopback-prefix-client
    with pytest.raises(ValueError, match="https"):
        HostClient(f"http://{host}:8080/api", limits=HostLimits())
    HostClient(f"https://{host}:8080/api", limits=HostLimits())  # over TLS any host is fine


def test_loopback_hosts_may_use_plain_http() -> None:
    for url in ("http://localhost:8080", "http://LOCALHOST/api", "http://localhost./x", "http://127.0.0.1:9", "http://[::1]/"):
        HostClient(url, limits=HostLimits())


PLAN = """
[source]
platform = "damstra"
base_url = "{source}"
access_key = "dk"
[target]
platform = "civica"
base_url = "https://api.civica-learning.com/eu"
scope = "x.learning-admin.com"
api_key = "ck"
"""


@pytest.mark.parametrize("host", LOOKALIKES)
def test_hosts_that_merely_start_like_loopback_are_refused_plain_http_by_the_plan(host: str) -> None:
    # mutant loopback-prefix-plan
    with pytest.raises(PlanError, match=r"source\.base_url.*https"):
        parse_plan(PLAN.format(source=f"http://{host}/api/v2"), env={})
    parse_plan(PLAN.format(source=f"https://{host}/api/v2"), env={})
    parse_plan(PLAN.format(source="http://localhost:8080/api/v2"), env={})
