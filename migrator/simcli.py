"""`migrator sim PLATFORM --port P`: one simulator in the foreground, on 127.0.0.1."""

from __future__ import annotations

import argparse
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

    try:
        anyio.run(lambda: serve(sim, port=args.port, on_ready=ready))
    except KeyboardInterrupt:
        pass
    return 0
