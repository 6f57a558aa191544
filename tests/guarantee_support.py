"""Helpers for the guarantee tests (tests/test_guarantees_*.py): plans shaped per test, small Damstra
tenants, reading the ledger file the way a second process would, and a scripted loopback server.

Not a test module itself: pytest collects only test_*.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import Sims, write_plan

SETTLED_STATES = ("written", "skipped", "dead")


def _swap(text: str, old: str, new: str) -> str:
    # conftest's plan changing shape must fail here, not silently leave a test without its setting
    assert text.count(old) == 1, f"write_plan() no longer contains {old!r} exactly once"
    return text.replace(old, new)


def guarantee_plan(
    folder: Path,
    sims: Sims,
    *,
    source_limits: str = "concurrency = 8",
    user_writers: int = 64,
    certificate_writers: int | None = 16,
    page_size: int | None = None,
    poll_initial: float | None = None,
    certifications: range = range(101, 119),
    extra_certifications: str = "",
) -> Path:
    """write_plan() with the knobs these tests turn; certificate_writers=None disables that stream."""
    path = write_plan(folder, sims, certifications=certifications, source_limits=source_limits)
    text = path.read_text()
    text = _swap(text, "[streams.users]\nwriters = 64\n", f"[streams.users]\nwriters = {user_writers}\n")
    certificates = "enabled = false" if certificate_writers is None else f"writers = {certificate_writers}"
    text = _swap(text, "[streams.certificates]\nwriters = 16\n", f"[streams.certificates]\n{certificates}\n")
    if page_size is not None:
        text = _swap(text, "[source.limits]\n", f"page_size = {page_size}\n[source.limits]\n")
    if poll_initial is not None:
        text = _swap(text, "poll_initial = 0.05\n", f"poll_initial = {poll_initial}\n")
    if extra_certifications:
        text = _swap(text, "[mapping.certifications]\n", f"[mapping.certifications]\n{extra_certifications}\n")
    path.write_text(text)
    return path


def tenant(usernames: list[str], *, first_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """A Damstra tenant as the simulator's `data=` rows: one group, users with ids 1.. in this order
    (in no group, so no user waits for a parent)."""
    rows: list[dict[str, Any]] = [{"kind": "group", "id": 1, "name": "Team 1", "description": "", "clientId": 1}]
    for uid, name in enumerate(usernames, start=1):
        rows.append({
            "kind": "user", "id": uid, "userName": name, "firstName": (first_names or {}).get(uid, f"First{uid}"),
            "lastName": f"Last{uid}", "emailAddress": f"{name}@example.org", "employeeNumber": None,
            "clientStatusId": 56, "active": True, "groups": [], "timeZone": "UTC",
        })  # fmt: skip
    return rows


def ledger_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the ledger over a connection of its own, as another process would: committed data only."""
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def civica_calls(sims: Sims) -> tuple[dict[str, int], int]:
    """(SetUser calls per action, AwardCertificate calls) as the simulator counted them so far."""
    return sims.civica.call(lambda s: (dict(s.set_user_calls), s.award_calls), sims.civica_sim)


async def stop_once(sims: Sims, reached: Callable[[dict[str, int], int], bool], stop: Any) -> dict[str, int]:
    """Set `stop` the moment the Civica counters satisfy `reached`; return the counters seen then.

    The counters are read while this event loop (the migration's) is blocked, and `stop` is set
    before it runs again: no write of the migration can start in between."""
    deadline = time.monotonic() + 60
    while True:
        calls, awards = civica_calls(sims)
        if reached(calls, awards):
            stop.set()
            return calls
        assert time.monotonic() < deadline, f"the run never reached the moment to stop: {calls}"
        await asyncio.sleep(0.005)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopbackServer:
    """An aiohttp server on 127.0.0.1 in this event loop; one handler per path, every hit timestamped."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.hits: list[tuple[float, str]] = []  # (time.monotonic(), path)
        self.url = ""
        self._runner: web.AppRunner | None = None

    def route(self, path: str, handler: Handler) -> None:
        self.handlers[path] = handler

    def times(self, path: str | None = None) -> list[float]:
        return sorted(t for t, p in self.hits if path is None or p == path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((time.monotonic(), request.path))
        handler = self.handlers.get(request.path)
        return await handler(request) if handler else web.json_response({"ok": True})

    async def __aenter__(self) -> LoopbackServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def scripted(*responses: Callable[[], web.StreamResponse]) -> Handler:
    """Answers in this order; the last one repeats."""
    served = [0]

    async def handle(request: web.Request) -> web.StreamResponse:
        n = served[0]
        served[0] += 1
        return responses[min(n, len(responses) - 1)]()

    return handle
