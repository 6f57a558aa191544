"""`migrator sim PLATFORM --port P`: one simulator in the foreground, on 127.0.0.1."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import anyio

from migrator.platforms import registry


def sim_epilog() -> str:
    """`migrator sim --help` epilog, from each platform's part; README.md's "Simulators" section says the same."""
    listed = sorted(registry.platforms().values(), key=lambda p: (p.open_source is None, p.name))  # sources first
    sims = [p.sim for p in listed if p.sim is not None]
    return (
        "credentials (test credentials of a local simulator: printed at start-up):\n"
        + "".join(s.credentials_help for s in sims)
        + '\n--data FILE.jsonl: one JSON object per line (blank lines skipped); "kind" says what it is\n'
        + "".join(s.data_help for s in sims)
        + ROUTES
    )


ROUTES = """
simulator routes (outside the API: no credentials, no rate limit, no faults):
  GET  /_sim/stats       JSON counters: requests, by_status (answers per HTTP status), faults; civica adds
                         users, active_users, awards, duplicate_awards, pending, failed_ops,
                         stuck_ops, set_user_calls (per action) and award_calls
  POST /_sim/rotate_key  damstra: body {"access_key": "NEW"}; the old key is refused (401) from now on
"""


def add_platform_options(parser: argparse.ArgumentParser) -> None:
    """The options of every platform's simulator (each help says which platform takes it)."""
    for platform in registry.platforms().values():
        for option in platform.sim.options if platform.sim else ():
            if option.flag_means_false:
                parser.add_argument(option.flag, dest=option.keyword, action="store_false", default=None,
                                    help=option.help)
            else:
                parser.add_argument(option.flag, dest=option.keyword, type=option.type, default=None,
                                    help=option.help)


def build_simulator(args: argparse.Namespace) -> Any:
    from migrator.simulate.faults import FaultSpec

    platform = registry.platform(args.platform)
    assert platform.simulator is not None and platform.sim is not None
    faults = FaultSpec.parse(args.faults) if args.faults else None
    options: dict[str, Any] = {"rate": args.rate, "burst": args.burst, "faults": faults, "data": args.data,
                               "seed": args.seed, "retry_after": args.retry_after}
    if platform.open_source:
        options["records"] = args.records  # a source generates users; a target starts empty
    if args.key:
        options[platform.sim.credential_keyword] = args.key
    for option in platform.sim.options:
        value = getattr(args, option.keyword)
        options[option.keyword] = option.default if value is None else value
    return platform.simulator(**{k: v for k, v in options.items() if v is not None})


def misplaced_options(args: argparse.Namespace) -> list[str]:
    """Platform options given for a simulator that does not take them, each as a message."""
    mine = {o.keyword for o in registry.platform(args.platform).sim.options}  # type: ignore[union-attr]
    return [
        f"{option.flag} is a {p.name} setting; the {args.platform} simulator does not take it"
        for p in registry.platforms().values() if p.sim is not None
        for option in p.sim.options
        if option.keyword not in mine and getattr(args, option.keyword, None) is not None
    ]  # fmt: skip


def _fail(message: str) -> int:
    print(f"migrator: error: {message}", file=sys.stderr)
    return 2


def serve_simulator(args: argparse.Namespace) -> int:
    from migrator.simulate.server import serve

    misplaced = misplaced_options(args)
    if misplaced:
        return _fail(f"{misplaced[0]} (see migrator sim --help)")
    try:
        sim = build_simulator(args)
    except OSError as exc:
        return _fail(f"--data {args.data}: {exc.strerror}")
    except ValueError as exc:
        return _fail(str(exc))

    def ready(url: str) -> None:
        print(f"{args.platform} simulator listening on {url} (Ctrl-C to stop)", flush=True)
        for line in registry.platform(args.platform).sim.banner(sim, url):  # type: ignore[union-attr]
            print(f"  {line}", flush=True)

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
        try:
            anyio.run(serve_until_signalled)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or not ours to bind
        return _fail(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}; choose another --port")
    return 0


def _sole(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group
