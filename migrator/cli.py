"""`migrator` command line: a thin layer over migrator.api. User mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sqlite3
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import orjson

from migrator import aio

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _fail(message: str, code: int) -> int:
    print(f"migrator: error: {message}", file=sys.stderr)
    return code


def _quoted(path: str | Path) -> str:
    """A path as it must be typed in a shell command we suggest."""
    return shlex.quote(str(path))


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
    from migrator.api import credentials_refused
    from migrator.http import AuthError
    from migrator.plan import load_plan
    from migrator.report import verify_summary
    from migrator.verify import SAMPLES, verify

    plan = load_plan(args.plan)
    # the report holds every difference; the terminal shows the first few of each kind
    samples = None if args.report else SAMPLES
    try:
        try:
            result = aio.run(lambda: verify(plan, samples=samples))
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except AuthError as err:
        then = f"Verify only reads, nothing was changed: fix the plan and run `migrator verify {_quoted(args.plan)}` again"
        raise credentials_refused(err, plan, plan.source.platform, then=then) from None
    _write_report({"verify": result}, args.report)
    full_list = (
        f"full list in {args.report}" if args.report
        else f"for the full list: migrator verify {_quoted(args.plan)} --report verify.json"
    )
    print(verify_summary(result, full_list))
    return EXIT_OK if result["ok"] else EXIT_FAILED


# ---- ledgers named on the command line ------------------------------------------------------------
LEDGER_TABLES = frozenset({"meta", "runs", "cursors", "records", "dead_letters"})
SQLITE_HEADER = b"SQLite format 3\x00"


def _ledger_problem(path: Path, how_to_fix: str, command: str | None = None) -> str | None:
    """Why `path` is not a migrator ledger (one line, with what to do), or None if it is one.
    `command`: the command that was given the path (e.g. `migrator status`), to suggest the right file.

    Looked at read-only: opening a file as a Ledger would add our tables to someone else's database.
    """
    if not path.exists():
        return f"no ledger at {path}; {how_to_fix}"
    if path.is_dir():
        return f"{path} is a directory, not a migrator ledger; {how_to_fix}"
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read the ledger {path}: {exc.strerror}"
    if header != SQLITE_HEADER:
        plan_ledger = _ledger_named_by_plan(path) if command else None
        if plan_ledger is not None:
            return f"{path} is a plan, not a ledger; for the ledger it names: {command} {_quoted(plan_ledger)}"
        return f"{path} is not a migrator ledger (not an SQLite file); {how_to_fix}"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"{path} is not a readable migrator ledger ({exc}); {how_to_fix}"
    if not LEDGER_TABLES <= tables:
        return f"{path} is an SQLite file but not a migrator ledger (it lacks the ledger's tables); {how_to_fix}"
    return None


def _ledger_named_by_plan(path: Path) -> Path | None:
    """A plan given where a ledger belongs: the ledger it names, resolved as the plan resolves it."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not {"source", "target"} <= doc.keys():
        return None
    import msgspec

    from migrator.plan import Plan

    default = next(f.default for f in msgspec.structs.fields(Plan) if f.name == "ledger")
    ledger = Path(str(doc.get("ledger", default)))
    return ledger if ledger.is_absolute() else path.parent / ledger


LEDGER_HINT = "check the path: a ledger is the `ledger` file a plan names, written by `migrator run PLAN`"


def cmd_status(args: argparse.Namespace) -> int:
    from migrator import api

    ledger = Path(args.ledger)
    problem = _ledger_problem(ledger, LEDGER_HINT, "migrator status")
    if problem:
        return _fail(problem, EXIT_USAGE)
    status = api.status(ledger)
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_status(status, ledger))
    return EXIT_OK


def _local_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def render_status(status: dict[str, Any], ledger: Path) -> str:
    """The ledger for a person: records per stream and state, each source read to the end or not,
    the runs in local time, and the dead letters with the command that lists them."""
    counts: dict[str, dict[str, int]] = status["streams"]
    cursors: dict[str, dict[str, Any]] = status["cursors"]
    names = list(cursors) + [name for name in counts if name not in cursors]
    lines = [f"ledger {ledger}", ""]
    head = ("stream", "read", "written", "skipped", "dead", "pending", "in flight", "source")
    lines.append(f"{head[0]:<14}" + "".join(f"{h:>10}" for h in head[1:7]) + f"  {head[7]}")
    for name in names:
        c = counts.get(name, {})
        cursor = cursors.get(name, {})
        if cursor.get("done"):
            source = "read to the end"
        elif cursor.get("cursor") is not None:
            source = "partly read"
        else:
            source = "not read yet" if not c else "partly read"
        if cursor.get("total") is not None:
            source += f" (source reports {cursor['total']:,})"
        cells = (sum(c.values()), c.get("written", 0), c.get("skipped", 0), c.get("dead", 0), c.get("pending", 0),
                 c.get("in_flight", 0))
        lines.append(f"{name:<14}" + "".join(f"{n:>10,}" for n in cells) + f"  {source}")
    if not names:
        lines.append("(no records yet)")
    lines += ["", "runs"]
    for run in status["runs"]:
        outcome = run["outcome"] or "did not finish (killed, or still running)"
        lines.append(
            f"  #{run['id']:<3} {run['mode'] or '-':<8} started {_local_time(run['started'])}"
            f"  ended {_local_time(run['finished'])}  {outcome}"
        )
    if not status["runs"]:
        lines.append("  (none)")
    dead: dict[str, int] = status["dead_letters"]
    lines.append("")
    if dead:
        lines.append(f"dead letters: {sum(dead.values()):,}")
        for key, n in sorted(dead.items()):
            stream, _, error_class = key.partition("/")
            lines.append(f"  {stream:<14}{error_class:<24}{n:>8,}")
        lines.append(f"to see them: migrator dlq list {_quoted(ledger)}")
    else:
        lines.append("dead letters: none")
    return "\n".join(lines)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from migrator import dlq

    ledger = Path(args.ledger)
    problem = _ledger_problem(ledger, LEDGER_HINT, "migrator dlq list")
    if problem:
        return _fail(problem, EXIT_USAGE)
    groups = dlq.list_groups(ledger, samples=args.samples)
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
    problem = _ledger_problem(
        plan.ledger_path,
        f"nothing to retry: check `ledger` in {args.plan}, or run the migration first: migrator run {_quoted(args.plan)}",
    )
    if problem:
        return _fail(problem, EXIT_USAGE)
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
    from migrator.demo import DEFAULT_PAIR, DemoError, demo

    pair = args.pair or list(DEFAULT_PAIR)
    if len(pair) != 2:
        return _fail(f"demo takes a SOURCE and a TARGET platform, or neither ({' '.join(DEFAULT_PAIR)})", EXIT_USAGE)
    source, target = pair
    try:
        return demo(source=source, target=target, records=args.records, report_path=args.report, quiet=args.quiet,
                    workdir=args.workdir)
    except DemoError as exc:
        return _fail(str(exc), EXIT_USAGE)


def cmd_platforms(args: argparse.Namespace) -> int:
    from mappings import pairs
    from migrator.demo import demo_pairs
    from migrator.platforms.registry import platforms

    known = platforms()
    listing = {
        "platforms": [
            {"name": p.name, "title": p.title, "directions": p.directions, "streams": p.streams,
             "simulator": p.simulator is not None}
            for p in known.values()
        ],
        "pairs": [{"source": s, "target": t, "demo": (s, t) in demo_pairs()} for s, t in pairs()],
    }
    if args.json:
        print(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    for p in listing["platforms"]:
        print(f"{p['name']:<10} {p['title']}  [{' + '.join(p['directions']) or 'no side yet'}]"
              + ("  simulator" if p["simulator"] else ""))
        for stream, record in p["streams"].items():
            print(f"    {stream:<14} {record}")
    print("pairs (source -> target):")
    for pair in listing["pairs"]:
        demo_note = f"  (migrator demo {pair['source']} {pair['target']})" if pair["demo"] else ""
        print(f"    {pair['source']} -> {pair['target']}{demo_note}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from migrator.demo import DEFAULT_PAIR

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
    p.add_argument("--report", metavar="PATH", help="write the JSON verify result here, with every difference")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("status", help="show what a ledger records: counts per state, cursors, runs")
    p.add_argument("ledger", help="the ledger file a plan names (`ledger = ...`)")
    p.add_argument("--json", action="store_true", help="the same as JSON (epoch timestamps)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dlq", help="dead letters: list them grouped, or re-drive them after a fix")
    dlq_sub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq_sub.add_parser("list", help="dead letters grouped by stream, class and message")
    q.add_argument("ledger", help="the ledger file a plan names (`ledger = ...`)")
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

    from migrator.platforms.registry import platforms
    from migrator.simcli import add_platform_options, sim_epilog

    p = sub.add_parser(
        "sim", help="serve a platform simulator on 127.0.0.1", epilog=sim_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a simulator of a platform's API on 127.0.0.1, for trying plans: same paths, auth,"
        " paging, envelopes, status codes and error bodies as the vendor's document.",
    )
    p.add_argument("platform", choices=[name for name, p in platforms().items() if p.simulator])
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
    p.add_argument("--retry-after", choices=["seconds", "date", "none"], default="seconds",
                   help="the form of Retry-After on a 429")
    p.add_argument("--key", help="the key the simulator accepts (default: its demo key, printed at start-up)")
    add_platform_options(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("demo", help="migrate between two embedded simulators, then verify")
    p.add_argument("pair", nargs="*", metavar="SOURCE TARGET",
                   help=f"the platforms to migrate between (default: {' '.join(DEFAULT_PAIR)}; see `migrator platforms`)")
    p.add_argument("--records", type=int, default=1000, help="users in the source simulator")
    p.add_argument("--report", metavar="PATH", help="write the JSON run report here")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--workdir", default=".demo", help="where the demo plan and ledger go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("platforms", help="list the platforms, their streams, and the supported pairs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_platforms)
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
