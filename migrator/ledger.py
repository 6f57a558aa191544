"""The ledger: every record's fate, the source cursors, the id map and the dead letters, in SQLite.

Writes go to one connection on the event-loop thread and are committed in groups: a writer that
must not send before its intent is durable awaits `durable()`, and every writer that recorded an
intent in the same tick shares one commit. WAL with synchronous=NORMAL survives a killed process
(only an OS crash could lose the newest commits), which is the failure we design for.

A record's state changes between two commits are kept in memory and applied at the commit, one
row per record however many times it changed: until a commit nothing is durable anyway, so the
buffer loses nothing an uncommitted SQLite transaction would not, and it saves a statement per
change. Readers see the buffer first (`state`, `owner_of`) or have it applied before they read.

The interface is small on purpose, so a PostgreSQL ledger can stand beside this one later.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from migrator.http.redact import Redactor

PENDING, IN_FLIGHT, WRITTEN, SKIPPED, DEAD = "pending", "in_flight", "written", "skipped", "dead"
SETTLED = (WRITTEN, SKIPPED, DEAD)
GROUP_COMMIT_SECONDS = 0.002

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, outcome TEXT, mode TEXT);
CREATE TABLE IF NOT EXISTS cursors (
    stream TEXT PRIMARY KEY, cursor TEXT, done INTEGER NOT NULL DEFAULT 0, total INTEGER);
CREATE TABLE IF NOT EXISTS records (
    stream TEXT NOT NULL, source_id TEXT NOT NULL, state TEXT NOT NULL,
    target_id TEXT, token TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (stream, source_id)) WITHOUT ROWID;
-- no index on state: every state change would move an index entry; counts scan the table instead
DROP INDEX IF EXISTS records_state;
CREATE TABLE IF NOT EXISTS losses (
    stream TEXT NOT NULL, field TEXT NOT NULL, reason TEXT NOT NULL, records INTEGER NOT NULL,
    PRIMARY KEY (stream, field, reason)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    stream TEXT NOT NULL, source_id TEXT NOT NULL, error_class TEXT NOT NULL, message TEXT NOT NULL,
    status INTEGER, payload TEXT, created REAL NOT NULL, PRIMARY KEY (stream, source_id)) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS id_map AS
    SELECT stream AS entity, source_id, target_id FROM records WHERE state = 'written';
"""


class RecordState(NamedTuple):
    state: str
    target_id: str | None
    token: str | None


class DeadLetter(NamedTuple):
    stream: str
    source_id: str
    error_class: str
    message: str
    status: int | None
    payload: str | None


class Ledger:
    def __init__(self, path: str | Path, *, redact: Iterable[str] = ()):
        self.path = Path(path)
        self._secrets = [s for s in redact if s]
        in_memory = str(path) == ":memory:"  # benchmarks only: measures the engine without the disk
        if not in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not in_memory and not self.path.exists():
            # owner-only from the first byte: the ledger holds payloads of people's records
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(":memory:" if in_memory else self.path, isolation_level="DEFERRED", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Natural keys (usernames) are random, so each commit dirties index pages all over the file.
        # Checkpointing every ~40 MB of WAL instead of every 4 MB writes each hot page back once per
        # many commits, not once per commit (a checkpoint blocks the event loop while it runs). A
        # bigger page cache would help too, but it costs resident memory that grows with the run.
        self.db.execute("PRAGMA wal_autocheckpoint=10000")
        self.db.executescript(_SCHEMA)
        self._upgrade()
        self.db.commit()
        self._dirty = 0
        self._last_commit = time.monotonic()
        self._flush: asyncio.Event | None = None
        # (stream, source_id) → the columns changed since the last commit; `attempts` is a delta
        self._changes: dict[tuple[str, str], dict[str, object]] = {}
        self._targets: dict[tuple[str, str], str] = {}  # (stream, natural key) → source_id, buffered rows
        self._losses: dict[tuple[str, str, str], int] = {}  # (stream, field, reason) → records, buffered
        self.applied = 0  # how many times the buffer was applied: a snapshot older than that is stale

    def _upgrade(self) -> None:
        """Ledgers written before natural keys were kept per record gain the column (and its index)."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(records)")}
        if "key" not in columns:
            self.db.execute("ALTER TABLE records ADD COLUMN key TEXT")
            rows = self.db.execute("SELECT stream, source_id, target_id FROM records WHERE target_id IS NOT NULL")
            self.db.executemany(
                "UPDATE records SET key = ? WHERE stream = ? AND source_id = ?",
                [(target_id.casefold(), stream, sid) for stream, sid, target_id in rows.fetchall()],
            )
        self.db.execute("DROP INDEX IF EXISTS records_target")
        self.db.execute("CREATE INDEX IF NOT EXISTS records_key ON records (stream, key)")

    # ---- commits -------------------------------------------------------------------------
    def _apply(self) -> None:
        """Write the buffered record changes into the open transaction (one UPDATE per record)."""
        if self._losses:
            self.db.executemany(
                "INSERT INTO losses VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream, field, reason) DO UPDATE SET records = records + excluded.records",
                [(*key, n) for key, n in self._losses.items()],
            )
            self._losses.clear()
        if not self._changes:
            return
        now = time.time()
        by_columns: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
        for (stream, sid), cols in self._changes.items():
            names = tuple(cols)
            by_columns.setdefault(names, []).append((*cols.values(), now, stream, sid))
        for names, rows in by_columns.items():
            sets = ", ".join("attempts = attempts + ?" if n == "attempts" else f"{n} = ?" for n in names)
            self.db.executemany(
                f"UPDATE records SET {sets}, updated = ? WHERE stream = ? AND source_id = ?", rows
            )
        self._changes.clear()
        self._targets.clear()
        self.applied += 1

    def commit(self) -> None:
        self._apply()
        self.db.commit()
        self._dirty = 0
        self._last_commit = time.monotonic()

    def _touch(self, n: int = 1) -> None:
        self._dirty += n
        if self._dirty >= 2000 or time.monotonic() - self._last_commit > 0.5:
            self.commit()

    async def durable(self) -> None:
        """Return once every change made so far is committed. Callers within a couple of
        milliseconds of each other share one commit (group commit)."""
        if self._dirty == 0:
            return
        if self._flush is not None:
            await self._flush.wait()
            return
        event = self._flush = asyncio.Event()
        try:
            await asyncio.sleep(GROUP_COMMIT_SECONDS)  # let the other writers add their intents first
        finally:
            self._flush = None
            self.commit()
            event.set()

    def close(self) -> None:
        self.commit()
        self.db.close()

    # ---- run metadata --------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        self.commit()

    def begin_run(self, mode: str) -> int:
        cur = self.db.execute("INSERT INTO runs (started, mode) VALUES (?, ?)", (time.time(), mode))
        self.commit()
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, outcome: str) -> None:
        self.db.execute("UPDATE runs SET finished = ?, outcome = ? WHERE id = ?", (time.time(), outcome, run_id))
        self.commit()

    def has_records(self) -> bool:
        self._apply()
        return self.db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None

    # ---- cursors -------------------------------------------------------------------------
    def cursor(self, stream: str) -> tuple[str | None, bool]:
        row = self.db.execute("SELECT cursor, done FROM cursors WHERE stream = ?", (stream,)).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def set_cursor(self, stream: str, cursor: str | None, *, done: bool = False) -> None:
        self.db.execute(
            "INSERT INTO cursors (stream, cursor, done) VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET cursor = excluded.cursor, done = excluded.done",
            (stream, cursor, int(done)),
        )
        self._touch()

    def set_total(self, stream: str, total: int | None) -> None:
        self.db.execute(
            "INSERT INTO cursors (stream, total) VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET total = excluded.total",
            (stream, total),
        )

    # ---- records -------------------------------------------------------------------------
    def state(self, stream: str, source_id: str) -> RecordState | None:
        change = self._changes.get((stream, source_id))
        if change is not None and "state" in change and "target_id" in change and "token" in change:
            return RecordState(change["state"], change["target_id"], change["token"])  # type: ignore[arg-type]
        row = self.db.execute(
            "SELECT state, target_id, token FROM records WHERE stream = ? AND source_id = ?", (stream, source_id)
        ).fetchone()
        return self._overlay(change, row)

    def _state_over(self, stream: str, source_id: str, row: tuple[str, str | None, str | None] | None) -> RecordState | None:
        """The state of a record whose stored row was read earlier, with the buffered changes on top."""
        return self._overlay(self._changes.get((stream, source_id)), row)

    @staticmethod
    def _overlay(change: dict[str, object] | None, row: tuple[str, str | None, str | None] | None) -> RecordState | None:
        if change is None:
            return RecordState(*row) if row else None
        state, target_id, token = row or (PENDING, None, None)
        return RecordState(
            change.get("state", state),  # type: ignore[arg-type]
            change.get("target_id", target_id),  # type: ignore[arg-type]
            change.get("token", token),  # type: ignore[arg-type]
        )

    def states(self, stream: str, source_ids: list[str]) -> StateSnapshot:
        """The states of one page's records in one query; see :class:`StateSnapshot`."""
        rows: dict[str, tuple[str, str | None, str | None]] = {}
        for start in range(0, len(source_ids), 500):
            chunk = source_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sid, *row in self.db.execute(
                f"SELECT source_id, state, target_id, token FROM records WHERE stream = ? AND source_id IN ({marks})",
                (stream, *chunk),
            ):
                rows[sid] = tuple(row)  # type: ignore[assignment]
        return StateSnapshot(self, stream, rows)

    def owner_of(self, stream: str, key: str, other_than: str) -> str | None:
        """The source record already settled onto this natural key (as the target compares keys:
        callers pass it folded where the target ignores case), if another one was."""
        buffered = self._targets.get((stream, key))
        if buffered is not None and buffered != other_than:
            return buffered
        for (sid,) in self.db.execute(
            "SELECT source_id FROM records WHERE stream = ? AND key = ? AND source_id != ?",
            (stream, key, other_than),
        ):
            change = self._changes.get((stream, sid))
            if change is None or change.get("key", key) == key:
                return sid
        return None

    def add_pending(self, stream: str, source_ids: Iterable[str]) -> None:
        now = time.time()
        rows = [(stream, sid, PENDING, now) for sid in source_ids]
        self.db.executemany(
            "INSERT OR IGNORE INTO records (stream, source_id, state, updated) VALUES (?, ?, ?, ?)", rows
        )
        self._touch(len(rows))

    def _set(self, stream: str, source_id: str, **cols: object) -> None:
        key = (stream, source_id)
        change = self._changes.get(key)
        if change is None:
            self._changes[key] = cols
        else:
            change.update(cols)
        key_ = cols.get("key")
        if key_ is not None:
            self._targets[(stream, key_)] = source_id  # type: ignore[index]
        self._touch()

    def mark_in_flight(self, stream: str, source_id: str) -> None:
        change = self._changes.get((stream, source_id))
        attempts = 1 + (change.get("attempts", 0) if change else 0)  # type: ignore[operator]
        self._set(stream, source_id, state=IN_FLIGHT, attempts=attempts)

    def save_token(self, stream: str, source_id: str, token: str | None) -> None:
        self._set(stream, source_id, token=token)

    def mark_written(self, stream: str, source_id: str, target_id: str, key: str | None = None) -> None:
        """`key`: the natural key as the target compares it (what `owner_of` looks for)."""
        self._set(stream, source_id, state=WRITTEN, target_id=target_id, token=None, reason=None,
                  key=target_id.casefold() if key is None else key)

    def mark_skipped(
        self, stream: str, source_id: str, reason: str, target_id: str | None = None, key: str | None = None
    ) -> None:
        """A record left behind on purpose; `target_id` when it exists in the target all the same
        (left as it was there), so that its children can still be attached to it."""
        if target_id is None:
            self._set(stream, source_id, state=SKIPPED, reason=reason)
        else:
            self._set(stream, source_id, state=SKIPPED, reason=reason, target_id=target_id,
                      key=target_id.casefold() if key is None else key)

    def add_losses(self, stream: str, losses: Iterable[tuple[str, str]]) -> None:
        """Fields of one carried record that the target does not hold: counted for the whole migration."""
        for field, reason in losses:
            k = (stream, field, reason)
            self._losses[k] = self._losses.get(k, 0) + 1

    def losses(self) -> list[tuple[str, str, str, int]]:
        self._apply()
        return self.db.execute("SELECT stream, field, reason, records FROM losses ORDER BY stream, field").fetchall()

    def mark_dead(
        self, stream: str, source_id: str, error_class: str, message: str, status: int | None, payload: object
    ) -> None:
        message = self.redact(message)
        text = None if payload is None else self.redact(orjson.dumps(payload, default=str).decode())
        self._set(stream, source_id, state=DEAD, reason=f"{error_class}: {message}", token=None)
        self.db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (stream, source_id, error_class, message, status, text, time.time()),
        )

    def redact(self, text: str) -> str:
        return Redactor(self._secrets)(text)  # the project's one redactor: encoded forms too

    def reopen_dead(self, stream: str, source_id: str, state: str = PENDING) -> None:
        """A dead letter is being re-driven: it becomes pending (or in flight, when its outcome was
        unknown and must be looked up first) and leaves the dead-letter store."""
        self._set(stream, source_id, state=state, reason=None)
        self.db.execute("DELETE FROM dead_letters WHERE stream = ? AND source_id = ?", (stream, source_id))

    # ---- reading back --------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        self._apply()
        out: dict[str, dict[str, int]] = {}
        for stream, state, n in self.db.execute("SELECT stream, state, count(*) FROM records GROUP BY stream, state"):
            out.setdefault(stream, {})[state] = n
        return out

    def dead_letters(self, stream: str | None = None) -> Iterator[DeadLetter]:
        self._apply()
        sql = "SELECT stream, source_id, error_class, message, status, payload FROM dead_letters"
        args: tuple[str, ...] = ()
        if stream:
            sql += " WHERE stream = ?"
            args = (stream,)
        for row in self.db.execute(sql + " ORDER BY stream, source_id", args):
            yield DeadLetter(*row)

    def stream_totals(self) -> dict[str, int | None]:
        return {s: t for s, t in self.db.execute("SELECT stream, total FROM cursors")}


class StateSnapshot:
    """One page's record states read in one query, answering as the ledger would now.

    Exact while the ledger has not applied its buffer since the snapshot was taken (every change
    made since is still in the buffer, which is consulted first); after that it asks the ledger.
    """

    __slots__ = ("_ledger", "_stream", "_rows", "_applied")

    def __init__(self, ledger: Ledger, stream: str, rows: dict[str, tuple[str, str | None, str | None]]):
        self._ledger, self._stream, self._rows, self._applied = ledger, stream, rows, ledger.applied

    def get(self, source_id: str) -> RecordState | None:
        ledger = self._ledger
        if ledger.applied != self._applied:
            return ledger.state(self._stream, source_id)
        return ledger._state_over(self._stream, source_id, self._rows.get(source_id))
