"""`migrator` command line: a thin layer over migrator.api. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

from migrator import aio

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _fail(message: str, code: int) -> int:
    print(f"migrator: error: {message}", file=sys.stderr)
    return code


def _write_report(report: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")


def cmd_run(args: argparse.Namespace) -> int:
    from migrator import api
    from migrator.plan import load_plan
    from migrator.progress import TqdmProgress
    from migrator.report import human_summary

    plan = load_plan(args.plan)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    progress = TqdmProgress(enabled=not args.quiet)

    async def run_until_signalled() -> dict[str, Any] | None:
        stop = anyio.Event()
        report = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, stop, tg.cancel_scope)
            report = await api.run(
                plan, resume=args.resume, dry_run=args.dry_run, limit=args.limit, progress=progress,
                no_ledger=args.no_ledger, stop=stop,
            )
            tg.cancel_scope.cancel()
        return report

    report = aio.run(run_until_signalled)
    resume_hint = f"resume with: migrator run {args.plan} --resume"
    if report is None:
        return _fail(f"stopped at once; requests in flight are reconciled on resume; {resume_hint}", EXIT_INTERRUPTED)
    _write_report(report, args.report)
    print(human_summary(report))
    if report["run"]["outcome"] == "stopped":
        return _fail(f"stopped on request; every settled record is in the ledger; {resume_hint}", EXIT_INTERRUPTED)
    stopped = report["run"].get("stopped_streams", {})
    for name, reason in stopped.items():
        pending = report["streams"][name]["pending"]
        _fail(
            f"stream {name} stopped: {reason}; nothing more was sent for it and {pending} records stay pending:"
            f" fix the plan, then {resume_hint}",
            EXIT_STOPPED,
        )
    if stopped:
        return EXIT_STOPPED
    if args.dry_run:
        return EXIT_OK
    # "finished but incomplete": records left pending, or dead-lettered (the summary names the command)
    complete = report["run"]["outcome"] == "complete" and not report["totals"]["dead_lettered"]
    return EXIT_OK if complete or args.limit else EXIT_FAILED


async def _signals(stop: anyio.Event, everything: anyio.CancelScope) -> None:
    """First Ctrl-C / SIGTERM: graceful stop. Second: stop at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            if stop.is_set():
                everything.cancel()
                return
            print(
                "\nmigrator: stopping: finishing requests in flight, then saving the ledger"
                " (press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            stop.set()


def cmd_verify(args: argparse.Namespace) -> int:
    from migrator.plan import load_plan
    from migrator.report import human_summary
    from migrator.verify import verify

    plan = load_plan(args.plan)
    result = aio.run(verify, plan)
    _write_report({"verify": result}, args.report)
    print(human_summary({"streams": {}, "totals": _empty_totals(), "fidelity_losses": [], "verify": result}).split("\n", 3)[-1])
    return EXIT_OK if result["ok"] else EXIT_FAILED


def _empty_totals() -> dict[str, Any]:
    return {k: 0 for k in ("read", "written", "skipped", "dead_lettered", "requests", "retried", "rate_limited",
                           "records_per_second", "seconds")}


def cmd_status(args: argparse.Namespace) -> int:
    from migrator import api

    print(orjson.dumps(api.status(args.ledger), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from migrator import dlq

    try:
        groups = dlq.list_groups(args.ledger, samples=args.samples)
    except FileNotFoundError:
        return _fail(f"no ledger at {args.ledger}", EXIT_USAGE)
    if args.json:
        print(orjson.dumps(groups, option=orjson.OPT_INDENT_2).decode())
    else:
        print(dlq.render(groups))
    return EXIT_OK


def cmd_dlq_retry(args: argparse.Namespace) -> int:
    from migrator import dlq
    from migrator.ledger import Ledger
    from migrator.plan import load_plan

    plan = load_plan(args.plan)
    if not plan.ledger_path.exists():
        return _fail(f"no ledger at {plan.ledger_path}: nothing to retry", EXIT_USAGE)
    ledger = Ledger(plan.ledger_path)
    reopened = dlq.reopen(ledger, set(args.stream or []) or None, set(args.error_class or []) or None)
    ledger.close()
    if not reopened:
        print("no dead letters match; nothing to retry")
        return EXIT_OK
    print("re-driving " + ", ".join(f"{n} {s}" for s, n in reopened.items()) + " through the current plan")
    args.resume, args.dry_run, args.limit, args.no_ledger = True, False, None, False
    return cmd_run(args)


def cmd_sim(args: argparse.Namespace) -> int:
    from migrator.simcli import serve_simulator

    return serve_simulator(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from migrator.demo import demo

    return demo(records=args.records, report_path=args.report, quiet=args.quiet, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migrator",
        description="Move users, groups and certificates between learning platforms: fast, resumable,"
        " nothing lost and nothing written twice.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run (or resume) the migration a plan describes")
    p.add_argument("plan", help="plan file (TOML)")
    p.add_argument("--resume", action="store_true", help="continue the migration recorded in the plan's ledger")
    p.add_argument("--dry-run", action="store_true", help="read, map and validate everything; write nothing")
    p.add_argument("--limit", type=int, metavar="N", help="read at most N records per stream")
    p.add_argument("--report", metavar="PATH", help="write the JSON run report here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", "-v", action="store_true", help="log retries, pauses and rate changes")
    p.add_argument("--no-ledger", action="store_true", help=argparse.SUPPRESS)  # benchmarks only
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="compare the source (through the mapping) with the target")
    p.add_argument("plan")
    p.add_argument("--report", metavar="PATH", help="write the JSON verify result here")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("status", help="show what a ledger records: counts per state, cursors, runs")
    p.add_argument("ledger")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dlq", help="dead letters: list them grouped, or re-drive them after a fix")
    dlq_sub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq_sub.add_parser("list", help="dead letters grouped by stream, class and message")
    q.add_argument("ledger")
    q.add_argument("--samples", type=int, default=3, help="example records per group")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_dlq_list)
    q = dlq_sub.add_parser(
        "retry", help="send dead letters through the plan's (fixed) mapping again, with the same exactly-once rules"
    )
    q.add_argument("plan")
    q.add_argument("--stream", action="append", help="only this stream (repeatable)")
    q.add_argument("--class", dest="error_class", action="append", help="only this error class (repeatable)")
    q.add_argument("--report", metavar="PATH")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--verbose", "-v", action="store_true")
    q.set_defaults(func=cmd_dlq_retry)

    p = sub.add_parser("sim", help="serve a platform simulator on 127.0.0.1")
    p.add_argument("platform", choices=["damstra", "civica"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--records", type=int, default=1000, help="generated users (source simulators)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, help="requests/s before answering 429")
    p.add_argument("--burst", type=int)
    p.add_argument(
        "--faults", metavar="SPEC",
        help='e.g. "500=0.05,502=0.01,drop=0.01,truncate=0.01,badjson=0.01,slow=0.01,slow_delay=3s,'
        'latency=20ms,after=0.5,seed=7" (after: share of write faults that strike once the write is applied)',
    )
    p.add_argument("--data", metavar="FILE.jsonl", help="serve these records instead of generated ones")
    p.add_argument("--status-delay", type=float, default=0.5, help="civica: seconds a SetUser stays pending")
    p.add_argument("--status-fail", type=float, default=0.0, help="civica: share of SetUsers that end failed (3)")
    p.add_argument("--status-stuck", type=float, default=0.0,
                   help="civica: share of SetUsers that stay pending for a long while, then fail")
    p.add_argument("--retry-after", choices=["seconds", "date", "none"], default="seconds",
                   help="the form of Retry-After on a 429")
    p.add_argument("--key", help="the credential the simulator accepts (default: the demo key)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("demo", help="migrate between two embedded simulators, then verify")
    p.add_argument("--records", type=int, default=1000, help="users in the source simulator")
    p.add_argument("--report", metavar="PATH", help="write the JSON run report here")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--workdir", default=".demo", help="where the demo plan and ledger go")
    p.set_defaults(func=cmd_demo)
    return parser


def _sole(group: BaseExceptionGroup) -> BaseException:
    """Task groups wrap errors; a user-facing error is still one error."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group


def main(argv: list[str] | None = None) -> int:
    from migrator.api import MigrationError, UsageError
    from migrator.http import HostUnreachable
    from migrator.plan import PlanError

    args = build_parser().parse_args(argv)
    try:
        try:
            return args.func(args)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except PlanError as exc:
        return _fail(f"plan: {exc}", EXIT_USAGE)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except MigrationError as exc:
        return _fail(str(exc), EXIT_STOPPED)
    except HostUnreachable as exc:  # verify talks to the hosts without api.run's wording
        return _fail(str(exc), EXIT_STOPPED)
    except KeyboardInterrupt:
        return _fail("interrupted; the ledger keeps every settled record: rerun with --resume", 130)


if __name__ == "__main__":
    sys.exit(main())
