"""The Python API the CLI is a thin layer over: `await run(plan)`, `await verify(plan)`, `status(path)`."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from mappings import mapping_for
from migrator import dlq
from migrator.connectors import exportable
from migrator.engine import Board, NoProgress, Progress, StreamRunner
from migrator.http import AuthError, HostUnreachable, RequestStats
from migrator.ledger import Ledger
from migrator.plan import Plan, PlanError
from migrator.platforms.registry import open_source, open_target
from migrator.report import build_report


class MigrationError(Exception):
    """The run cannot go on (bad credentials, an unreachable host): one line for the user (exit 3)."""


class UsageError(MigrationError):
    """The command asks for something that cannot be right (a resume without its ledger, the ledger
    of another migration): one line naming what was looked for and what to do instead (exit 2)."""


def selected_streams(plan: Plan, mapping: Any) -> list[str]:
    unknown = sorted(set(plan.streams) - set(mapping.streams))
    if unknown:
        raise PlanError(
            f"unknown stream `streams.{unknown[0]}`; this pair moves: {', '.join(mapping.streams)}"
        )
    chosen = [s for s in mapping.streams if s not in plan.streams or plan.streams[s].enabled]
    if not chosen:
        raise PlanError("every stream is disabled in `streams`; enable at least one")
    return chosen


def _identity(plan: Plan) -> str:
    return orjson.dumps(
        {"source": [plan.source.platform, plan.source.base_url], "target": [plan.target.platform, plan.target.base_url]}
    ).decode()


def _open_ledger(plan: Plan, resume: bool) -> Ledger:
    if resume and not plan.ledger_path.exists():
        # starting over here would write everything again to a target that holds the first run's data
        raise UsageError(
            f"--resume: no ledger at {plan.ledger_path} (the plan's `ledger`); nothing to resume. If the file"
            " was moved, point `ledger` at it; to start a new migration instead, run without --resume"
        )
    ledger = Ledger(plan.ledger_path, redact=plan.secrets())
    identity = ledger.get_meta("identity")
    if identity is None:
        ledger.set_meta("identity", _identity(plan))
    elif identity != _identity(plan):
        ledger.close()
        raise UsageError(
            f"ledger {plan.ledger_path} belongs to a migration between other hosts; use another `ledger` path"
        )
    elif not resume and ledger.has_records():
        ledger.close()
        raise UsageError(
            f"ledger {plan.ledger_path} already holds this migration; pass --resume to continue it"
            " (or set a new `ledger` path to start over)"
        )
    return ledger


async def _collect_keys(target: Any, streams: list[str], ledger: Ledger, stats: RequestStats) -> None:
    """Dry run: note what the target already holds (natural key as it compares keys, carried fields)."""
    for name in streams:
        stream = target.streams[name]
        if not exportable(stream):
            continue
        batch = []
        async for key, fields in stream.export(stats):
            batch.append((stream.fold_key(key), fields))
            if len(batch) >= 1000:
                ledger.remember_target(name, batch)
                batch.clear()
        ledger.remember_target(name, batch)


async def _check_references(target: Any, runners: list[StreamRunner], stats: RequestStats) -> list[dict[str, Any]]:
    """Dry run: every value the records need to exist in the target, as the target can confirm it."""
    wanted: dict[tuple[str, str], int] = {}
    for runner in runners:
        for ref, n in runner.stats.references.items():
            wanted[ref] = wanted.get(ref, 0) + n
    if not wanted:
        return []
    verdicts = await target.check_references(set(wanted), stats)
    out = []
    for (kind, value), n in sorted(wanted.items()):
        verdict, note = verdicts.get((kind, value), ("unconfirmed", "the target cannot be asked"))
        out.append({"kind": kind, "value": value, "records": n, "verdict": verdict, "note": note})
    return out


async def _stop_when_asked(
    stop: anyio.Event | None, board: Board, work: anyio.CancelScope, watcher: anyio.CancelScope, grace: float
) -> None:
    with watcher:
        await (stop.wait() if stop is not None else anyio.sleep_forever())
        board.halt()
        await anyio.sleep(grace)
        work.cancel()  # requests still open after the grace period are abandoned: resume reconciles them


def _first(group: BaseException) -> Any:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def credentials_refused(err: AuthError, plan: Plan, source_name: str, *, then: str) -> MigrationError:
    """One line naming the side, the request and what to check; `then` says what to do after the fix."""
    side, cfg = ("source", plan.source) if err.host == source_name else ("target", plan.target)
    check = getattr(cfg, "credential_hint", "key")
    return MigrationError(
        f"the {side} refused the credentials (HTTP {err.status}) at {err.method} {err.path}; check the {side}"
        f" {check} in the plan. {then}"
    )


def host_unreachable(err: HostUnreachable, source_name: str, *, then: str) -> MigrationError:
    """One line naming the side, its base URL, what was tried and for how long."""
    side = "source" if err.host == source_name else "target"
    advice = err.advice(f"`{side}.base_url`")
    return MigrationError(f"cannot reach the {side} at {err.base_url}: {err.tried}; {advice}. {then}")


async def run(
    plan: Plan,
    *,
    resume: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
    no_ledger: bool = False,
    stop: anyio.Event | None = None,
    grace: float = 20.0,
) -> dict[str, Any]:
    """Migrate everything the plan names; returns the JSON-able run report.

    `no_ledger` keeps the ledger in memory: for benchmarks that price the ledger, never for real runs.
    Setting `stop` asks for a graceful stop: no new reads or writes, requests in flight finish
    (for at most `grace` seconds), the ledger is committed and the report says "stopped".
    """
    progress = progress or NoProgress()
    mapping = mapping_for(plan.source.platform, plan.target.platform, plan.mapping)
    streams = selected_streams(plan, mapping)
    secrets = plan.secrets()
    scratch = tempfile.TemporaryDirectory(prefix="migrator-dry-") if dry_run else None
    if scratch:
        ledger = Ledger(Path(scratch.name) / "dry.sqlite")
    elif no_ledger:
        ledger = Ledger(":memory:")
    else:
        ledger = _open_ledger(plan, resume)
    run_id = ledger.begin_run("dry-run" if dry_run else ("resume" if resume else "run"))
    source = open_source(plan.source, secrets)
    target = open_target(plan.target, secrets)
    board = Board(ledger)
    board.done.update(s for s in mapping.streams if s not in streams)
    setup = RequestStats()
    started = time.monotonic()
    runners: list[StreamRunner] = []
    outcome = "failed"
    after_fix = (
        "Nothing was written: fix it and run the dry run again" if dry_run
        else "No record was dead-lettered for it: fix it and rerun with --resume"
    )
    try:
        async with source.client, target.client:
            await target.prepare(setup)
            dry_existing = None
            if dry_run:
                await _collect_keys(target, streams, ledger, setup)

                def dry_existing(stream: str, key: str) -> dict[str, Any] | None:
                    return ledger.target_fields(stream, key)

            for name in streams:
                cfg = plan.streams.get(name)
                if cfg and cfg.existing is not None and not target.streams[name].checks_existing:
                    raise PlanError(
                        f"`streams.{name}.existing`: the {plan.target.platform} {name} stream cannot tell records"
                        " that already existed apart on write (what it finds already there is settled, never"
                        " sent twice); remove the key"
                    )
                runners.append(
                    StreamRunner(
                        name,
                        source.streams[name],
                        target.streams[name],
                        mapping.map,
                        ledger,
                        board,
                        cfg.writers if cfg else 16,
                        progress,
                        limit,
                        dry_existing,
                        existing=(cfg.existing if cfg else None) or "conflict",
                        stop_after_same_failure=cfg.stop_after_same_failure if cfg else 20,
                    )
                )
            try:
                async with anyio.create_task_group() as work:
                    watcher = anyio.CancelScope()
                    work.start_soon(_stop_when_asked, stop, board, work.cancel_scope, watcher, grace)
                    async with anyio.create_task_group() as tg:
                        for runner in runners:
                            tg.start_soon(runner.run)
                    watcher.cancel()
            except* AuthError as group:
                raise credentials_refused(_first(group), plan, source.client.name, then=after_fix) from None
            except* HostUnreachable as group:
                raise host_unreachable(_first(group), source.client.name, then=after_fix) from None
            references = await _check_references(target, runners, setup) if dry_run else []
        if board.halted:
            outcome = "stopped"
        else:
            outcome = "complete" if all(r.complete for r in runners) else "partial"
    except AuthError as err:
        raise credentials_refused(err, plan, source.client.name, then=after_fix) from None
    except HostUnreachable as err:
        raise host_unreachable(err, source.client.name, then=after_fix) from None
    finally:
        ledger.end_run(run_id, outcome)
        progress.close()
    report = build_report(
        ledger, runners, setup, time.monotonic() - started, dry_run=dry_run, plan=plan, hosts=[source.client, target.client]
    )
    report["run"]["outcome"] = outcome
    report["run"]["stopped_streams"] = {r.name: r.stop_reason for r in runners if r.stop_reason}
    if dry_run:
        report["dry_run"]["references"] = references
        report["dry_run"]["rejects"] = dlq.groups(ledger, samples=2)
    report["run"]["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
    ledger.close()
    if scratch:
        scratch.cleanup()
    return report


def status(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.exists():
        raise MigrationError(f"no ledger at {file}")
    ledger = Ledger(file)
    try:
        summary = ledger.status_summary()
    finally:
        ledger.close(commit=False)
    return {
        "streams": summary.counts,
        # a partitioned stream shows one cursor per partition, as "stream/partition"
        "cursors": {
            f"{c.stream}/{c.partition}" if c.partition else c.stream: {"cursor": c.cursor, "done": c.done, "total": c.total}
            for c in summary.cursors
        },
        "runs": [r._asdict() for r in summary.runs],
        "dead_letters": {f"{stream}/{cls}": n for (stream, cls), n in summary.dead_letters.items()},
    }
