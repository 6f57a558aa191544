"""Run a simulator app on loopback: in a background thread (tests) or in the current loop (CLI)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


class _HasApp(Protocol):
    def app(self) -> web.Application: ...


def _as_app(target: web.Application | _HasApp) -> web.Application:
    return target if isinstance(target, web.Application) else target.app()


def _check_host(host: str) -> str:
    # Simulators are unauthenticated test doubles: never expose them beyond this machine.
    if host in ("127.0.0.1", "localhost"):
        return LOOPBACK
    raise ValueError(f"simulators only bind 127.0.0.1, not {host!r}")


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    # a test double needs no long goodbye: open keep-alive connections get half a second
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, _check_host(host), port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def serve(
    app: web.Application | _HasApp,
    host: str = LOOPBACK,
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled. ``on_ready`` receives the base URL once listening (port 0 = any)."""
    runner, bound = await _start(_as_app(app), host, port)
    try:
        if on_ready is not None:
            on_ready(f"http://{LOOPBACK}:{bound}")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class RunningSim:
    """Sync context manager: the simulator runs on its own loop in a daemon thread.

    ``call`` runs a function on that loop so tests can read or poke state without races.
    """

    def __init__(self, sim: web.Application | _HasApp, port: int = 0, host: str = LOOPBACK) -> None:
        self.sim = sim
        self._host = _check_host(host)
        self._requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def __enter__(self) -> RunningSim:
        self._thread = threading.Thread(target=self._run, name="sim-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error!r}") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner, self.port = loop.run_until_complete(
                _start(_as_app(self.sim), self._host, self._requested_port)
            )
        except BaseException as exc:  # report to the starting thread instead of dying silently
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the simulator's loop thread (awaiting it if it is a coroutine)."""
        if self._loop is None:
            raise RuntimeError("simulator is not running")

        async def invoke() -> Any:
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=30)
