"""Shared simulator skeleton: one middleware applies stats, latency, rate limit, auth and faults.

Platforms subclass ``SimulatorBase`` and supply only their specifics (routes, credential,
error bodies, which routes write). ``/_sim/*`` routes bypass everything but settling.

``on_served(request, response)``, when set, is called on the simulator's loop after each
(non-``/_sim``) request was handled and before its answer is sent: a test can change the data at an
exact moment of a run (e.g. delete records behind a reader's offset once it has been served page 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from migrator.simulate.faults import (
    FaultInjector,
    FaultSpec,
    Outcome,
    drop_connection,
    garbled_response,
    truncated_response,
)
from migrator.simulate.ratelimit import TokenBucketLimiter
from migrator.simulate.stats import SimStats

MAX_BODY = 16 * 1024 * 1024
_BROKEN = web.ResponseKey("sim_broken", bool)  # marks responses that never (fully) reached the client


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json")


class SimulatorBase:
    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int | None = None,
        retry_after: str = "seconds",
        faults: str | FaultSpec | None = None,
        on_served: Callable[[web.Request, web.StreamResponse], None] | None = None,
    ) -> None:
        self.stats = SimStats()
        self.limiter = TokenBucketLimiter(rate, burst, retry_after)
        self.fault_spec = FaultSpec.coerce(faults)
        self.injector = FaultInjector(self.fault_spec)
        self.on_served = on_served

    # ---- platform hooks -------------------------------------------------------------
    def credential(self, request: web.Request) -> str:
        """Rate-limit bucket key: the credential as presented (valid or not)."""
        raise NotImplementedError

    def authenticate(self, request: web.Request) -> web.StreamResponse | None:
        """Return an error response to refuse the request, or None to let it through."""
        return None

    def refuse_early(self, request: web.Request) -> web.StreamResponse | None:
        """Checked before the rate limiter (e.g. a revoked key is refused even when over the rate)."""
        return None

    def error_response(self, status: int, headers: dict[str, str] | None = None) -> web.Response:
        """The platform's body for an injected 5xx or a 429."""
        raise NotImplementedError

    def is_write(self, request: web.Request) -> bool:
        return request.method not in ("GET", "HEAD")

    def add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def platform_stats(self) -> dict[str, Any]:
        return {}

    def on_request(self) -> None:
        """Called at the start of every request (including /_sim); lazy state upkeep goes here."""

    # ---- app ---------------------------------------------------------------------
    def app(self) -> web.Application:
        # Bodies up to 16 MiB (aiohttp's default is 1 MiB): huge field values reach the platform's own checks.
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_get("/_sim/stats", self._sim_stats)
        self.add_routes(app.router)
        return app

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return json_response({**self.stats.snapshot(), **self.platform_stats()})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.on_request()
        if request.path.startswith("/_sim/"):
            return await handler(request)
        self.stats.received()
        try:
            resp = await self._pipeline(request, handler)
        except web.HTTPException as exc:
            self.stats.answered(exc.status)
            raise
        except Exception:
            self.stats.answered(500)
            raise
        if not resp.get(_BROKEN):
            self.stats.answered(resp.status)
        if self.on_served is not None:
            self.on_served(request, resp)
        return resp

    async def _pipeline(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.fault_spec.latency:
            await asyncio.sleep(self.fault_spec.latency)
        refused = self.refuse_early(request)
        if refused is not None:
            return refused
        wait = self.limiter.acquire(self.credential(request))
        if wait is not None:
            return self.error_response(429, self.limiter.headers(wait))
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        fault = self.injector.roll(self.is_write(request))
        if fault is not None and fault[0] == "slow":
            return await self._slow(request, handler, fault[1])
        if fault is not None and fault[0] == "badjson":
            # Always served (a 2xx that was not processed would be a lie no API tells); only the body is cut.
            self.stats.faulted("badjson")
            return garbled_response(await handler(request))
        if fault is not None and fault[1] == "before":
            return await self._inflict(request, fault[0], None)
        resp = await handler(request)
        if fault is not None:
            # The write is applied; the client still sees a failure it cannot interpret.
            self.stats.faulted("after")
            return await self._inflict(request, fault[0], resp)
        return resp

    async def _slow(self, request: web.Request, handler: Any, phase: str) -> web.StreamResponse:
        """Hold the answer back ``slow_delay`` s; ``after``: the write is applied first, else after the delay."""
        self.stats.faulted("slow")
        delay = self.fault_spec.slow_delay
        if phase == "after":
            self.stats.faulted("after")
            resp = await handler(request)
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(delay)
            if _client_gone(request):
                # An abandoned request is dropped before the handler runs: nothing is applied.
                self.stats.faulted("slow_abandoned")
                resp = web.Response(status=499)
                resp[_BROKEN] = True
                return resp
            resp = await handler(request)
        if _client_gone(request):
            resp[_BROKEN] = True  # the client gave up: the answer will never arrive
        return resp

    async def _inflict(self, request: web.Request, outcome: Outcome, resp: web.StreamResponse | None) -> web.StreamResponse:
        self.stats.faulted(str(outcome))
        if isinstance(outcome, int):
            return self.error_response(outcome)
        if outcome == "drop":
            broken: web.StreamResponse = drop_connection(request)
        else:
            body = resp.body if isinstance(resp, web.Response) and isinstance(resp.body, bytes) else b'{"results":[]}'
            broken = await truncated_response(request, body, "application/json")
        broken[_BROKEN] = True
        return broken


def delivered(resp: web.StreamResponse) -> bool:
    """True unless the response was broken on purpose (dropped, truncated, or its client gave up)."""
    return not resp.get(_BROKEN)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
