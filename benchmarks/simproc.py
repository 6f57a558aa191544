"""`migrator sim ...` with the write counters the benchmarks need added to GET /_sim/stats.

Usage: python benchmarks/simproc.py civica --port P [every flag `migrator sim` takes]

The simulator is the product's own (same flags, same code); this wrapper only adds
`set_user_calls` (accepted SetUser calls by action) and `award_calls` to the stats payload, so a
benchmark can count writes that were sent twice after a kill and resume.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from migrator.cli import build_parser
from migrator.simcli import build_simulator
from migrator.simulate.server import serve


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(["sim", *argv])
    sim = build_simulator(args)
    stock = sim.platform_stats

    def platform_stats() -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if hasattr(sim, "set_user_calls"):
            extra["set_user_calls"] = dict(sim.set_user_calls)
            extra["award_calls"] = sim.award_calls
        return {**stock(), **extra}

    sim.platform_stats = platform_stats  # type: ignore[method-assign]

    def ready(url: str) -> None:
        print(f"{args.platform} simulator (benchmark counters) listening on {url}", flush=True)

    try:
        anyio.run(lambda: serve(sim, port=args.port, on_ready=ready))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
