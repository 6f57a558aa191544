"""Login-token auth, specified against a tiny token server on real loopback HTTP.

The server works like Absorb's /authenticate: each login issues a new token and invalidates the
previous one, so a second login anywhere (another tool, another run) makes every request in flight
meet a 401. The client must then log in again exactly once, shared by all workers, retry, and lose
nothing; a refused login stops with an AuthError that names the login route and shows no secret.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from migrator.http import AuthError, HostClient, HostLimits, HttpError, LoginToken, Rejection, Response

USERNAME = "migration-bot"
PASSWORD = "pw-correct-horse-battery"
LOGIN = "/login"


class TokenServer:
    """Login route plus a tiny item store; only the newest token is valid."""

    def __init__(self, *, expires_in: float | None = None, token_in_query: bool = False) -> None:
        self.expires_in = expires_in
        self.token_in_query = token_in_query
        self.current: str | None = None
        self.issued_at = 0.0
        self.logins = 0  # successful logins by the client under test
        self.login_attempts = 0
        self.refused = 0  # requests answered 401 for a stale or missing token
        self.items: dict[str, Any] = {}
        self.accepted: Counter[str] = Counter()  # item id -> writes applied
        self.rotate_after: int | None = None  # invalidate the token once this many items are stored
        self.hold_refusals: int | None = None  # keep 401s waiting until this many are in flight
        self._held: list[asyncio.Event] = []
        self._serial = itertools.count(1)
        self.url = ""
        self._runner: web.AppRunner | None = None

    def new_token(self) -> str:
        self.current = f"tok-{next(self._serial)}-9f8e7d6c5b4a"
        self.issued_at = asyncio.get_running_loop().time()
        return self.current

    def rotate(self) -> None:
        """Someone else logged in as the same user: our token is void from now on."""
        self.new_token()

    async def login(self, request: web.Request) -> web.StreamResponse:
        self.login_attempts += 1
        body = await request.json()
        if body.get("username") != USERNAME or body.get("password") != PASSWORD:
            # a careless server that echoes what it was sent
            return web.json_response({"error": f"invalid password {body.get('password')!r}"}, status=401)
        self.logins += 1
        answer: dict[str, Any] = {"access_token": self.new_token(), "token_type": "bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer)

    def _token_ok(self, request: web.Request) -> bool:
        if self.token_in_query:
            sent = request.query.get("access_token")
        else:
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if sent != self.current:
            return False
        if self.expires_in is not None:
            return asyncio.get_running_loop().time() - self.issued_at < self.expires_in
        return True

    async def refuse(self, request: web.Request) -> web.StreamResponse:
        self.refused += 1
        if self.hold_refusals is not None:
            # answer no 401 before `hold_refusals` requests met one: they are truly concurrent
            gate = asyncio.Event()
            self._held.append(gate)
            if len(self._held) >= self.hold_refusals:
                for held in self._held:
                    held.set()
            await asyncio.wait_for(gate.wait(), 5)
        return web.json_response({"error": "token expired or superseded"}, status=401)

    async def put_item(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request):
            return await self.refuse(request)
        item_id = request.match_info["id"]
        self.items[item_id] = await request.json()
        self.accepted[item_id] += 1
        if self.rotate_after is not None and len(self.items) == self.rotate_after:
            self.rotate()
        return web.json_response({"id": item_id})

    async def get_item(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request):
            return await self.refuse(request)
        item_id = request.match_info["id"]
        if item_id not in self.items:
            # echoes the credential it was sent, as careless servers do
            sent = request.headers.get("Authorization") or request.query.get("access_token")
            return web.json_response({"error": f"no item {item_id} (caller {sent})"}, status=404)
        return web.json_response(self.items[item_id])

    async def always_refused(self, request: web.Request) -> web.StreamResponse:
        self.refused += 1
        return web.json_response({"error": "not for you"}, status=401)

    async def soft_error(self, request: web.Request) -> web.StreamResponse:
        # NexPort style: an auth failure reported inside a 200 body
        code = 0 if self._token_ok(request) else 4
        return web.json_response(
            {"api_error_entity": {"error_code": code, "error_message": "Authentication Error"}}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(LOGIN, self.login)
        app.router.add_put("/items/{id}", self.put_item)
        app.router.add_get("/items/{id}", self.get_item)
        app.router.add_get("/refused", self.always_refused)
        app.router.add_get("/soft", self.soft_error)
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
async def server() -> AsyncIterator[TokenServer]:
    srv = TokenServer()
    await srv.start()
    yield srv
    await srv.stop()


def limits(**overrides: Any) -> HostLimits:
    base: dict[str, Any] = dict(rate=2000.0, burst=200, concurrency=32, timeout=5.0, max_retries=3)
    return HostLimits(**(base | dict(backoff_base=0.01, backoff_cap=0.05) | overrides))


def login_token(password: str = PASSWORD, **overrides: Any) -> LoginToken:
    body = {"username": USERNAME, "password": password}
    return LoginToken(**({"path": LOGIN, "body": body} | overrides))


def token_client(srv: TokenServer, *, password: str = PASSWORD, **overrides: Any) -> HostClient:
    return HostClient(srv.url, limits=limits(), auth=login_token(password, **overrides), name="lms")


async def test_a_token_invalidated_mid_run_costs_one_login_and_loses_nothing(server: TokenServer) -> None:
    server.rotate_after = 150  # half way through, someone else logs in as our user
    ids = [f"u{i}" for i in range(300)]
    workers = asyncio.Semaphore(16)

    async def write(item_id: str) -> None:
        async with workers:
            await http.request("PUT", f"/items/{item_id}", json={"name": item_id}, idempotent=False)

    async with token_client(server) as http:
        await asyncio.gather(*(write(i) for i in ids))
    assert server.logins == 2  # the first one, and exactly one after the token was superseded
    assert server.refused >= 1  # the run did meet the invalidation
    assert set(server.items) == set(ids)  # nothing lost
    assert set(server.accepted.values()) == {1}  # nothing written twice
    assert http.stats.status_counts[401] == server.refused
    assert http.stats.requests == len(ids) + server.refused + server.logins


async def test_concurrent_401s_cause_exactly_one_login(server: TokenServer) -> None:
    async with token_client(server) as http:
        # the first requests all find no token yet: one login serves them all
        await asyncio.gather(*(http.request("PUT", f"/items/{i}", json={}) for i in range(20)))
        assert server.logins == 1
        server.rotate()
        server.hold_refusals = 20
        answers = await asyncio.gather(*(http.request("GET", f"/items/{i}") for i in range(20)))
    assert server.refused == 20  # all twenty were refused at once
    assert server.logins == 2  # and one login answered them all
    assert [a.status for a in answers] == [200] * 20


async def test_a_second_401_after_a_fresh_token_is_an_auth_error(server: TokenServer) -> None:
    async with token_client(server) as http:
        with pytest.raises(AuthError) as info:
            await http.request("GET", "/refused")
    assert server.refused == 2  # sent, refused, logged in again, sent once more, refused: stop
    assert server.logins == 2
    assert info.value.status == 401 and "GET /refused: HTTP 401 (credential rejected)" in str(info.value)


async def test_a_wrong_password_is_an_auth_error_naming_the_login_route_without_the_secret(
    server: TokenServer,
) -> None:
    wrong = "pw-wrong-guess-42"
    async with token_client(server, password=wrong) as http:
        results = await asyncio.gather(
            *(http.request("GET", f"/items/{i}") for i in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, AuthError) for r in results)
    assert server.login_attempts == 1  # a refused password is not tried again by every worker
    err = results[0]
    assert isinstance(err, AuthError)
    assert str(err).startswith("POST /login: login refused (HTTP 401)")
    assert (err.method, err.path, err.status) == ("POST", "/login", 401)
    for text in (str(err), repr(err), err.body_excerpt, repr(http)):
        assert wrong not in text and PASSWORD not in text
    assert "***" in err.body_excerpt  # the server did echo it


async def test_tokens_are_redacted_in_messages_once_known(server: TokenServer) -> None:
    async with token_client(server) as http:
        with pytest.raises(HttpError) as info:
            await http.request("GET", "/items/missing", params={"q": "x"})
    token = server.current
    assert token is not None and info.value.status == 404
    assert token not in str(info.value) and token not in info.value.body_excerpt
    assert "caller Bearer ***" in info.value.body_excerpt  # the echo is there, the token is not
    assert str(info.value).startswith("GET /items/missing?q=x: HTTP 404")


async def test_a_token_sent_in_the_query_string_is_renewed_and_redacted() -> None:
    srv = TokenServer(token_in_query=True)
    await srv.start()
    try:
        async with token_client(srv, query_param="access_token") as http:
            await http.request("PUT", "/items/a", json={"n": 1}, params={"mode": "upsert"})
            first = srv.current
            srv.rotate()
            resp = await http.request("GET", "/items/a")  # refused, one login, retried
            assert resp.json() == {"n": 1} and srv.logins == 2 and srv.refused == 1
            with pytest.raises(HttpError) as info:
                await http.request("GET", "/items/missing")
    finally:
        await srv.stop()
    err = info.value
    assert first is not None and srv.current is not None
    for text in (str(err), err.path, err.body_excerpt):
        assert first not in text and srv.current not in text
    assert err.path == "/items/missing?access_token=***"
    assert "caller ***" in err.body_excerpt


async def test_a_token_is_renewed_before_it_expires_without_meeting_a_401() -> None:
    srv = TokenServer(expires_in=0.6)
    await srv.start()
    try:
        async with token_client(srv, refresh_early=0.3) as http:
            await http.request("PUT", "/items/a", json={})
            await asyncio.sleep(0.35)  # inside the refresh margin, not yet expired on the server
            await asyncio.gather(*(http.request("GET", "/items/a") for _ in range(10)))
    finally:
        await srv.stop()
    assert srv.logins == 2 and srv.refused == 0


async def test_an_auth_failure_inside_a_200_body_is_handled_like_a_401(server: TokenServer) -> None:
    def nexport_errors(resp: Response) -> Rejection | None:
        entity = resp.json().get("api_error_entity") or {}
        code = entity.get("error_code", 0)
        if code == 0:
            return None
        return Rejection(f"error_code {code}: {entity.get('error_message')}", auth=code == 4)

    auth = login_token()
    async with HostClient(server.url, limits=limits(), auth=auth, validate=nexport_errors) as http:
        await http.request("GET", "/soft")
        server.rotate()
        resp = await http.request("GET", "/soft")  # soft-refused, one login, retried
        assert resp.json()["api_error_entity"]["error_code"] == 0 and server.logins == 2
        server.login_attempts = 0
        server.rotate()
        server.expires_in = 0.0  # every token is void at once: the retry is refused too
        with pytest.raises(AuthError) as info:
            await http.request("GET", "/soft")
    assert server.login_attempts == 1
    assert str(info.value) == "GET /soft: HTTP 200: error_code 4: Authentication Error"


async def test_header_and_basic_auth_need_no_login(server: TokenServer) -> None:
    from migrator.http import BasicAuth, HeaderAuth

    for auth in (HeaderAuth("X-Api-Key", "k-123456"), BasicAuth("user", "secret-pw")):
        async with HostClient(server.url, limits=limits(), auth=auth) as http:
            with pytest.raises(AuthError) as info:
                await http.request("GET", "/refused")
        assert "k-123456" not in str(info.value) and "secret-pw" not in str(info.value)
    assert server.login_attempts == 0 and server.refused == 2  # no re-login, no retry
