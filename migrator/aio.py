"""Running the engine's event loop: uvloop where it is installed (Linux, macOS), asyncio elsewhere.

uvloop's loop and transports cost about a third less CPU per request than asyncio's, and the
engine is CPU-bound when the target allows more than one core can send. `MIGRATOR_LOOP=asyncio`
forces the standard loop (to rule uvloop out when diagnosing).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def loop_name() -> str:
    if os.environ.get("MIGRATOR_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    # Every request allocates a few hundred short-lived objects; the default collector threshold
    # (700) then runs a young-generation pass every few requests. Objects that exist at start
    # (modules, plan, clients) are frozen out of the collector's view, and passes are rarer.
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    return anyio.run(func, *args, backend_options={"use_uvloop": loop_name() == "uvloop"})
