"""The engine: every stream read, mapped and written concurrently, with each outcome in the ledger.

Per stream:  reader ─► [pages] ─► mapper ─► [records] ─► N writers
All streams run at once; a child record waits only for *its* parents' target ids (the Board). A
child whose parent was dead-lettered, or skipped by the mapping, is dead-lettered as
`missing_dependency`; a parent the target already held (found identical, or skipped under
`existing = "skip"`) keeps its children, and a non-idempotent child of it is looked up before it is
sent, since it may be there already. A stream whose writes keep failing alike stops (SameFailureWatch).
The source cursor advances only behind the low watermark of settled pages (PageTracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from migrator.connectors import Dep, Encoded, Found, Loss, Mapped, Page, SourceStream, TargetStream, WriteItem
from migrator.dlq import message_shape
from migrator.errors import RequestFailed, RunStopped
from migrator.http import RequestStats
from migrator.ledger import (
    DEAD,
    FOUND,
    IN_FLIGHT,
    SETTLED,
    SKIPPED,
    WRITTEN,
    Ledger,
    RecordState,
    WriteProgress,
)
from migrator.model import RecordError, Skip


class Progress(Protocol):
    def start(self, stream: str, total: int | None, done: int) -> None: ...
    def advance(self, stream: str, n: int = 1) -> None: ...
    def set_total(self, stream: str, total: int | None) -> None: ...
    def finish(self, stream: str) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, stream: str, total: int | None, done: int) -> None: ...
    def advance(self, stream: str, n: int = 1) -> None: ...
    def set_total(self, stream: str, total: int | None) -> None: ...
    def finish(self, stream: str) -> None: ...
    def close(self) -> None: ...


class MissingDependency(Exception):
    pass


class Halted(Exception):
    """The run is stopping: leave this record pending for the resumed run."""


class ParentStopped(Halted):
    """The parent's stream stopped (a systematic failure): leave this record pending too."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.stream = stream


class Board:
    """Who is waiting for which parent's target id; answers from the ledger once a parent settles."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.waiters: dict[Dep, anyio.Event] = {}
        self.done: set[str] = set()
        self.stopped: set[str] = set()  # streams that stopped on a systematic failure
        self.halted = False
        self.known: dict[Dep, str] = {}  # written parents' target ids never change: remember a few
        self.found: set[Dep] = set()  # those of `known` that the target held before this migration

    def _remember(self, dep: Dep, target_id: str, found: bool) -> str:
        if len(self.known) >= 50_000:
            self.known.clear()
            self.found.clear()
        self.known[dep] = target_id
        if found:
            self.found.add(dep)
        return target_id

    def halt(self) -> None:
        """Graceful stop: nobody waits for a parent any more."""
        self.halted = True
        for event in self.waiters.values():
            event.set()
        self.waiters.clear()

    async def target_id(self, dep: Dep) -> str:
        while True:
            if self.halted:
                raise Halted()
            known = self.known.get(dep)
            if known is not None:
                return known
            # check and register without an await in between: a settle cannot slip past us
            state = self.ledger.state(*dep)
            if state is not None and state.state in (WRITTEN, SKIPPED) and state.target_id is not None:
                # a skipped parent with a target id exists in the target, left as it was there
                return self._remember(dep, state.target_id, state.progress == FOUND)
            if state is not None and state.state in (SKIPPED, DEAD):
                raise MissingDependency(f"parent {dep[0]} {dep[1]} was {state.state.replace('dead', 'dead-lettered')}")
            if dep[0] in self.stopped:
                raise ParentStopped(dep[0])
            if dep[0] in self.done:
                raise MissingDependency(f"parent {dep[0]} {dep[1]} does not exist in the source")
            event = self.waiters.get(dep)
            if event is None:
                event = self.waiters[dep] = anyio.Event()
            await event.wait()

    async def resolve(self, deps: list[Dep]) -> dict[Dep, str]:
        found: dict[Dep, str] = {}
        for dep in deps:
            known = self.known.get(dep)  # the common case, without a coroutine per parent
            found[dep] = known if known is not None else await self.target_id(dep)
        return found

    def settled(self, stream: str, source_id: str) -> None:
        event = self.waiters.pop((stream, source_id), None)
        if event is not None:
            event.set()

    def stream_done(self, stream: str, *, stopped: bool = False) -> None:
        """The stream has ended: its unsettled records will not settle in this run. Children of a
        stream that stopped stay pending; children of one read to the end have no parent."""
        (self.stopped if stopped else self.done).add(stream)
        for dep in [d for d in self.waiters if d[0] == stream]:
            self.waiters.pop(dep).set()


class PageTracker:
    """Commits a page's cursor once it and every earlier page are fully settled (low watermark)."""

    def __init__(self, ledger: Ledger, stream: str):
        self.ledger, self.stream = ledger, stream
        self.order: deque[int] = deque()
        self.pages: dict[int, list[Any]] = {}  # seq → [outstanding, cursor, closed]
        self.seq = 0
        self.last_committed: str | None = None

    def open(self, cursor: str | None) -> int:
        self.seq += 1
        self.order.append(self.seq)
        self.pages[self.seq] = [0, cursor, False]
        return self.seq

    def add(self, seq: int) -> None:
        self.pages[seq][0] += 1

    def close(self, seq: int) -> None:
        self.pages[seq][2] = True
        self._advance()

    def done(self, seq: int) -> None:
        self.pages[seq][0] -= 1
        self._advance()

    def _advance(self) -> None:
        while self.order and self.pages[self.order[0]][2] and self.pages[self.order[0]][0] == 0:
            _, cursor, _ = self.pages.pop(self.order.popleft())
            if cursor is not None:
                self.ledger.set_cursor(self.stream, cursor)
                self.last_committed = cursor


class Item(msgspec.Struct):
    seq: int
    source_id: str
    mapped: Mapped
    prior: RecordState | None
    native: Any
    dropped: Sequence[Loss] = ()  # source fields the canonical model does not carry


class StreamStats:
    def __init__(self) -> None:
        self.requests = RequestStats()
        self.settled = 0
        self.started = time.monotonic()
        self.finished: float | None = None
        self.dry: dict[str, int] = {}
        self.dry_requests = 0
        self.references: dict[tuple[str, str], int] = {}  # dry run: (kind, value) → records needing it

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Failure(NamedTuple):
    item: Item
    error_class: str
    message: str
    status: int | None
    payload: Any


class SameFailureWatch:
    """Holds back a stream's failed writes while they keep failing alike (same class, same message
    up to ids and quoted values). N of them in a row is a mistake in the plan (or a target that
    refuses everything), not N bad records: the stream stops and they stay pending. A success or a
    different failure releases them as ordinary dead letters, and the count starts again."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: list[Failure] = []
        self.shape: tuple[str, str] | None = None

    def hold(self, failure: Failure) -> bool:
        """Keep this failure back if it fails like the ones held so far (False: it does not)."""
        shape = (failure.error_class, message_shape(failure.message))
        if self.held and shape != self.shape:
            return False
        self.shape = shape
        self.held.append(failure)
        return True

    @property
    def full(self) -> bool:
        return len(self.held) >= self.limit

    def release(self) -> list[Failure]:
        held, self.held, self.shape = self.held, [], None
        return held

    def matches(self, failure: Failure) -> bool:
        return (failure.error_class, message_shape(failure.message)) == self.shape


class StreamRunner:
    def __init__(
        self,
        name: str,
        source: SourceStream,
        target: TargetStream,
        mapper: Callable[[str, Any], Mapped],
        ledger: Ledger,
        board: Board,
        writers: int,
        progress: Progress,
        limit: int | None = None,
        dry_existing: Callable[[str, str], dict[str, Any] | None] | None = None,
        *,
        existing: str = "conflict",
        stop_after_same_failure: int = 20,
    ):
        self.name, self.source, self.target, self.mapper = name, source, target, mapper
        self.ledger, self.board, self.writers, self.progress = ledger, board, writers, progress
        self.limit, self.dry_existing, self.existing = limit, dry_existing, existing
        # natural keys compared the way the target compares them (case-insensitively unless it says otherwise)
        self.fold = target.fold_key
        self.watch = SameFailureWatch(stop_after_same_failure) if stop_after_same_failure and dry_existing is None else None
        self.stop_reason: str | None = None  # set when this stream stopped on a systematic failure
        self.stats = StreamStats()
        self.tracker = PageTracker(ledger, name)
        self.active: set[str] = set()  # ids between mapper and settle: offset paging may repeat them
        self.claims: dict[str, str] = {}  # target key → source id being written to it
        self.claimed: dict[str, list[str]] = {}  # source id → the keys it holds
        self.complete = False

    async def run(self) -> None:
        cursor, done = self.ledger.cursor(self.name)
        counts = self.ledger.counts().get(self.name, {})
        self.progress.start(self.name, self.ledger.stream_totals().get(self.name), sum(counts.values()))
        if done:
            self.board.stream_done(self.name)
            self.stats.finished = time.monotonic()
            self.complete = True
            return
        send_pages, recv_pages = anyio.create_memory_object_stream[Page](2)
        # records go to the writers through a plain asyncio queue: an anyio stream costs two
        # scheduler round trips per record, which shows at thousands of records a second
        items: asyncio.Queue[Item | None] = asyncio.Queue(self.writers * 2)
        exhausted: list[bool] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, send_pages, cursor, exhausted)
            tg.start_soon(self._map, recv_pages, items)
            for _ in range(self.writers):
                tg.start_soon(self._write_loop, items)
        if self.stop_reason is None and not self.board.halted:
            self._release_held()  # fewer than N failed alike: ordinary dead letters (on a stop they stay pending)
        self.stats.finished = time.monotonic()
        stopped = self.board.halted or self.stop_reason is not None
        if exhausted and not self.tracker.order and not stopped:  # read to the end AND all settled
            self.ledger.set_cursor(self.name, self.tracker.last_committed, done=True)
            self.complete = True
        self.ledger.commit()
        self.board.stream_done(self.name, stopped=self.stop_reason is not None)
        self.progress.finish(self.name)

    @property
    def halted(self) -> bool:
        """No new reads or writes for this stream: the run is stopping, or this stream stopped."""
        return self.board.halted or self.stop_reason is not None

    async def _read(self, out: ObjectSendStream[Page], cursor: str | None, exhausted: list[bool]) -> None:
        read = 0
        async with out:
            async for page in self.source.pages(cursor, self.stats.requests):
                if self.halted:
                    return  # graceful stop: no new pages
                if page.total is not None:
                    self.ledger.set_total(self.name, page.total)
                    self.progress.set_total(self.name, page.total)
                if self.limit is not None and read + len(page.records) >= self.limit:
                    cut = self.limit - read
                    # a cut page must not move the cursor past records we never read
                    keep_cursor = page.cursor if cut == len(page.records) else None
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await out.send(Page(page.records[:cut], keep_cursor, page.total))
                    return
                read += len(page.records)
                try:
                    await out.send(page)
                except anyio.BrokenResourceError:
                    return  # the mapper stopped (graceful stop)
            exhausted.append(True)

    async def _map(self, pages: ObjectReceiveStream[Page], out: asyncio.Queue[Item | None]) -> None:
        async with pages:
            await self._map_pages(pages, out)
        await out.put(None)  # the end: each writer passes it on to the next

    async def _map_pages(self, pages: ObjectReceiveStream[Page], out: asyncio.Queue[Item | None]) -> None:
        async for page in pages:
            seq = self.tracker.open(page.cursor)
            ids = list(dict.fromkeys(sid for sid, _ in page.records))
            self.ledger.add_pending(self.name, ids)
            states = self.ledger.states(self.name, ids)
            for sid, native in page.records:
                if self.halted:
                    return  # the rest of the page stays pending; its cursor never passes them
                if sid in self.active:
                    continue  # a repeat (overlapping pages) of a record still on its way
                # as the ledger knows it now, not when the page arrived: a repeat may have just settled
                state = states.get(sid)
                if state is not None and state.state in SETTLED:
                    continue  # settled earlier, in this run or an earlier one
                self.active.add(sid)
                self.tracker.add(seq)
                try:
                    mapped = self.mapper(self.name, self.source.decode(native))
                    dropped = self.source.losses(native)
                    natural = self.target.natural_key(mapped.record)
                    if natural is not None:
                        self._claim(self.fold(natural), sid, natural)  # in read order: the first record read keeps the key
                except Skip as skip:
                    self.ledger.mark_skipped(self.name, sid, skip.reason)  # by the mapping: nothing in the target
                    self._settle(seq, sid)
                    continue
                except RecordError as err:
                    self.ledger.mark_dead(self.name, sid, err.error_class, err.message, err.status, native)
                    self._settle(seq, sid)
                    continue
                except BaseException:
                    self._release(sid)
                    raise
                await out.put(Item(seq, sid, mapped, state, native, dropped))
            self.tracker.close(seq)

    def _settle(self, seq: int, sid: str) -> None:
        self.active.discard(sid)
        self.board.settled(self.name, sid)
        self.tracker.done(seq)
        self.stats.settled += 1
        self.progress.advance(self.name)

    async def _write_loop(self, items: asyncio.Queue[Item | None]) -> None:
        while (item := await items.get()) is not None:
            if self.halted:
                continue  # drain without writing: these stay pending for --resume
            await self._write(item)
        items.put_nowait(None)  # for the next writer (nothing else is left in the queue)

    async def _write(self, item: Item) -> None:
        name, sid = self.name, item.source_id
        encoded: Encoded | None = None
        settled = False
        try:
            parents = await self.board.resolve(item.mapped.deps)
            encoded = self.target.encode(item.mapped.record, parents)
            key = self.fold(encoded.key)
            self._claim(key, sid, encoded.key)
            losses = [*item.dropped, *encoded.losses] if item.dropped else encoded.losses
            if self.dry_existing is not None:
                self._dry_run(encoded, key)
                self._written(sid, encoded.key, key, losses)
                settled = True
                return

            async def store_progress(progress: WriteProgress | None) -> None:
                # committed with the next group commit: losing it costs a harmless resend, not a duplicate
                self.ledger.save_progress(name, sid, progress)

            prior = item.prior
            write = WriteItem(
                stream=name,
                source_id=sid,
                encoded=encoded,
                progress=prior.progress if prior else None,
                store_progress=store_progress,
                stats=self.stats.requests,
                existing=self.existing,
            )
            if self.target.write_safety == "lookup" and (
                (prior is not None and prior.state == IN_FLIGHT)  # an earlier attempt's outcome is unknown
                or (self.board.found and not self.board.found.isdisjoint(item.mapped.deps))  # a parent was there before us
            ):
                there = await self.target.reconcile(write)
                if there is not None:
                    self._written(sid, there, key, losses, found=prior is None or prior.state != IN_FLIGHT)
                    settled = True
                    return
            self.ledger.mark_in_flight(name, sid)
            if self.target.write_safety == "lookup":
                await self.ledger.durable()  # the intent is on disk before a non-idempotent request leaves
            target_id = await self.target.write(write)
            self._written(sid, target_id, key, losses, found=isinstance(target_id, Found))
            settled = True
        except ParentStopped as stopped:
            if self.stop_reason is None and not self.board.halted:
                self.stop_reason = f"its parent stream `{stopped.stream}` stopped"
        except Halted:
            pass
        except MissingDependency as err:
            self.ledger.mark_dead(name, sid, "missing_dependency", str(err), None, item.native)
            settled = True
        except Skip as skip:  # the target's `existing` policy: the record is there, left as it was
            self.ledger.mark_skipped(name, sid, skip.reason, skip.target_id, None if encoded is None else key)
            if self.watch is not None and self.watch.held and self.stop_reason is None:
                self._release_held()
            settled = True
        except RecordError as err:
            payload = encoded.payload if encoded is not None else item.native
            settled = self._failed(Failure(item, err.error_class, err.message, err.status, payload))
        except RunStopped:  # refused credentials, an unreachable host: every record would fail alike
            raise
        except RequestFailed as err:
            payload = encoded.payload if encoded is not None else item.native
            settled = self._failed(Failure(item, err.error_class, str(err), err.status, payload))
        finally:
            self._release(sid)
            if settled:
                self._settle(item.seq, sid)
            # an unsettled record (cancelled mid-write, or held back) keeps its place: the cursor must not pass it

    def _written(self, sid: str, target_id: str, key: str, losses: Sequence[Loss], *, found: bool = False) -> None:
        self.ledger.mark_written(self.name, sid, target_id, key, found=found)
        if losses:
            self.ledger.add_losses(self.name, losses)
        if self.watch is not None and self.watch.held and self.stop_reason is None:
            self._release_held()  # a write went through: the failures held so far were not systematic

    def _failed(self, failure: Failure) -> bool:
        """A write failed for good: dead-letter it (True), or hold it back while the stream's writes
        keep failing alike (False: it stays unsettled, and pending if the stream stops)."""
        watch = self.watch
        if watch is not None and self.stop_reason is not None:
            if watch.matches(failure):
                return False  # in flight when the stream stopped, failing the same way: stays pending too
        elif watch is not None:
            if not watch.hold(failure):
                self._release_held()  # a different failure: the run of alike ones is broken
                watch.hold(failure)
            if watch.full:
                first = watch.held[0]
                self.stop_reason = f"{len(watch.held)} writes in a row failed alike ({first.error_class}: {first.message})"
            return False
        self._dead(failure)
        return True

    def _dead(self, failure: Failure) -> None:
        self.ledger.mark_dead(
            self.name, failure.item.source_id, failure.error_class, failure.message, failure.status, failure.payload
        )

    def _release_held(self) -> None:
        """The failures held back were not systematic after all: they become dead letters."""
        if self.watch is None:
            return
        for failure in self.watch.release():
            self._dead(failure)
            self._settle(failure.item.seq, failure.item.source_id)

    def _claim(self, key: str, sid: str, shown: str) -> None:
        """Two source records must not become one target record: the second is dead-lettered.
        `key` is folded as the target compares keys; `shown` is the key as written."""
        owner = self.claims.get(key) or self.ledger.owner_of(self.name, key, sid)
        if owner is not None and owner != sid:
            how = "" if self.target.keys_case_sensitive else " (the target compares keys ignoring case)"
            raise RecordError(
                "duplicate_natural_key", f"target key '{shown}' is already carried by source record {owner}{how}"
            )
        self.claims[key] = sid
        self.claimed.setdefault(sid, []).append(key)

    def _release(self, sid: str) -> None:
        # once settled, the ledger answers for the key (written rows keep their target id)
        for key in self.claimed.pop(sid, ()):
            if self.claims.get(key) == sid:
                del self.claims[key]

    def _dry_run(self, encoded: Encoded, key: str) -> None:
        """What the real run would do with this record, judged against what the target holds now."""
        held = self.dry_existing(self.name, key) if self.dry_existing else None
        if held is None:
            verdict = "would_create"
        elif not (self.target.checks_existing or self.target.write_safety == "lookup"):
            verdict = "already_in_target_written_again"  # this target cannot tell: it would add another
        elif not self.target.differences(encoded, held):
            verdict = "already_in_target"  # identical: settled as ours without a write
        else:
            verdict = {"conflict": "would_conflict", "update": "would_update", "skip": "would_skip_existing"}[self.existing]
        self.stats.dry[verdict] = self.stats.dry.get(verdict, 0) + 1
        if verdict in _SENDS:
            self.stats.dry_requests += encoded.requests
        for ref in encoded.references:
            self.stats.references[ref] = self.stats.references.get(ref, 0) + 1


_SENDS = frozenset({"would_create", "would_update", "already_in_target_written_again"})  # dry-run verdicts that write
