"""`migrator sim PLATFORM --port P`: one simulator in the foreground, on 127.0.0.1."""

from __future__ import annotations

import argparse
import signal
import sys

import anyio

from migrator.simulate.faults import FaultSpec


def build_simulator(args: argparse.Namespace):
    faults = FaultSpec.parse(args.faults) if args.faults else None
    common = {"rate": args.rate, "burst": args.burst, "faults": faults, "data": args.data, "seed": args.seed,
              "retry_after": args.retry_after}
    if args.platform == "damstra":
        from migrator.platforms.damstra.simulator import DamstraSimulator

        extra = {"access_key": args.key} if args.key else {}
        return DamstraSimulator(records=args.records, **common, **extra)
    from migrator.platforms.civica.simulator import CivicaSimulator

    extra = {"api_key": args.key} if args.key else {}
    civica = {"status_delay": args.status_delay, "status_fail": args.status_fail, "status_stuck": args.status_stuck}
    return CivicaSimulator(**civica, **common, **extra)


def serve_simulator(args: argparse.Namespace) -> int:
    from migrator.simulate.server import serve

    try:
        sim = build_simulator(args)
    except ValueError as exc:
        print(f"migrator: error: {exc}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(f"{args.platform} simulator listening on {url} (Ctrl-C to stop)", flush=True)

    async def serve_until_signalled() -> None:
        # Explicit handlers: a process started in the background by a shell ignores SIGINT, and
        # Python then never turns it into KeyboardInterrupt; SIGTERM is what supervisors send.
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(sim, port=args.port, on_ready=ready))
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

    try:
        anyio.run(serve_until_signalled)
    except KeyboardInterrupt:
        pass
    return 0
