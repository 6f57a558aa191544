"""The ledger: every record's fate, the source cursors, the id map and the dead letters, in SQLite.

Writes go to one connection on the event-loop thread and are committed in groups: a writer that
must not send before its intent is durable awaits `durable()`, and every writer that recorded an
intent in the same tick shares one commit. WAL with synchronous=NORMAL survives a killed process
(only an OS crash could lose the newest commits), which is the failure we design for.

A record's state changes between two commits are kept in memory and applied at the commit, one
row per record however many times it changed: until a commit nothing is durable anyway, so the
buffer loses nothing an uncommitted SQLite transaction would not, and it saves a statement per
change. Readers see the buffer first (`state`, `owner_of`) or have it applied before they read.

The interface is small on purpose, so a PostgreSQL ledger can stand beside this one later: no
other module runs SQL on it, cursors are keyed by (stream, partition), and a record's multi-step
write progress is a typed `WriteProgress`, stored as JSON and decoded once when its row is read.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson

from migrator.http.redact import Redactor

PENDING, IN_FLIGHT, WRITTEN, SKIPPED, DEAD = "pending", "in_flight", "written", "skipped", "dead"
SETTLED = (WRITTEN, SKIPPED, DEAD)
GROUP_COMMIT_SECONDS = 0.002

_CURSORS_COLUMNS = (
    "stream TEXT NOT NULL, partition_key TEXT NOT NULL DEFAULT '', cursor TEXT, done INTEGER NOT NULL DEFAULT 0,"
    " total INTEGER, PRIMARY KEY (stream, partition_key)"
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, outcome TEXT, mode TEXT);
CREATE TABLE IF NOT EXISTS cursors ({_CURSORS_COLUMNS});
CREATE TABLE IF NOT EXISTS records (
    stream TEXT NOT NULL, source_id TEXT NOT NULL, state TEXT NOT NULL,
    target_id TEXT, progress TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
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


class WriteProgress(msgspec.Struct, frozen=True, omit_defaults=True):
    """How far a write that takes several requests got, kept so a resumed run picks it up there:
    the step under way, the target's job (status) id for it, and whatever else that step needs."""

    step: str
    job_id: str | None = None
    data: dict[str, Any] = {}


# the progress of a settled record that was in the target before this migration (found, not created):
# a non-idempotent child of it may be there already too, so it is looked up before it is sent
FOUND = WriteProgress("found")

_progress_encoder = msgspec.json.Encoder()
_decode_progress = msgspec.json.Decoder(WriteProgress).decode


def _encode_progress(progress: WriteProgress) -> str:
    return _progress_encoder.encode(progress).decode()  # TEXT, as a reader of the file expects JSON to be


def _progress_from_token(token: str) -> WriteProgress:
    """A `"step:job id"` token, as ledgers written before WriteProgress hold it."""
    step, _, job_id = token.partition(":")
    return WriteProgress(step, job_id or None)


_StoredRow = tuple[str, str | None, WriteProgress | None]  # (state, target id, progress) as read


def _row(state: str, target_id: str | None, progress: str | None) -> _StoredRow:
    """A stored (state, target id, progress) row with its progress decoded (most rows have none)."""
    return state, target_id, None if progress is None else _decode_progress(progress)


class RecordState(NamedTuple):
    state: str
    target_id: str | None
    progress: WriteProgress | None


class CursorRow(NamedTuple):
    stream: str
    partition: str  # "" for a stream read as one
    cursor: str | None
    done: bool
    total: int | None


class RunRow(NamedTuple):
    id: int
    started: float
    finished: float | None
    outcome: str | None
    mode: str | None


class Summary(NamedTuple):
    """What `migrator status` shows of a ledger."""

    counts: dict[str, dict[str, int]]  # stream → state → records
    cursors: list[CursorRow]
    runs: list[RunRow]
    dead_letters: dict[tuple[str, str], int]  # (stream, error class) → records


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
        self._target_snapshot = False  # whether the dry run's scratch table exists on this connection

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def _upgrade(self) -> None:
        """Bring a ledger written by an earlier version up to this schema, in one transaction."""
        columns, cursor_columns = self._columns("records"), self._columns("cursors")
        if not ({"key", "progress"} <= columns and "partition_key" in cursor_columns):
            self.db.execute("BEGIN")  # sqlite3 runs DDL outside transactions: a kill mid-upgrade must undo it all
        if "key" not in columns:  # natural keys were not kept per record
            self.db.execute("ALTER TABLE records ADD COLUMN key TEXT")
            # one statement, in SQLite: a million rows must not pass through Python's memory
            self.db.create_function("casefold", 1, str.casefold, deterministic=True)
            self.db.execute("UPDATE records SET key = casefold(target_id) WHERE target_id IS NOT NULL")
            if self.db.execute("SELECT 1 FROM records WHERE state = 'written' LIMIT 1").fetchone():
                # its earlier runs' fidelity losses were never counted: the report must say so
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('losses_counted_since_upgrade', '1')")
        self.db.execute("DROP INDEX IF EXISTS records_target")
        self.db.execute("CREATE INDEX IF NOT EXISTS records_key ON records (stream, key)")
        if "progress" not in columns:  # progress was a "step:job id" string in a `token` column
            self.db.execute("ALTER TABLE records RENAME COLUMN token TO progress")
            rows = self.db.execute("SELECT stream, source_id, progress FROM records WHERE progress IS NOT NULL")
            self.db.executemany(
                "UPDATE records SET progress = ? WHERE stream = ? AND source_id = ?",
                [(_encode_progress(_progress_from_token(token)), stream, sid) for stream, sid, token in rows.fetchall()],
            )
        if "partition_key" not in cursor_columns:  # one cursor per stream: each becomes its default partition
            self.db.execute("ALTER TABLE cursors RENAME TO cursors_unpartitioned")
            self.db.execute(f"CREATE TABLE cursors ({_CURSORS_COLUMNS})")
            self.db.execute(
                "INSERT INTO cursors (stream, partition_key, cursor, done, total)"
                " SELECT stream, '', cursor, done, total FROM cursors_unpartitioned ORDER BY rowid"
            )
            self.db.execute("DROP TABLE cursors_unpartitioned")

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
            values = cols.values()
            if cols.get("progress") is not None:  # rare: only writes that take several requests save any
                values = [_encode_progress(v) if n == "progress" else v for n, v in cols.items()]  # type: ignore[arg-type]
            by_columns.setdefault(names, []).append((*values, now, stream, sid))
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

    def close(self, *, commit: bool = True) -> None:
        """`commit=False` drops what was not committed, as a killed process would: for readers."""
        if commit:
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

    # ---- cursors: one per (stream, partition); "" is the partition of a stream read as one ----------
    def cursor(self, stream: str, partition: str = "") -> tuple[str | None, bool]:
        row = self.db.execute(
            "SELECT cursor, done FROM cursors WHERE stream = ? AND partition_key = ?", (stream, partition)
        ).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def set_cursor(self, stream: str, cursor: str | None, partition: str = "", *, done: bool = False) -> None:
        self.db.execute(
            "INSERT INTO cursors (stream, partition_key, cursor, done) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(stream, partition_key) DO UPDATE SET cursor = excluded.cursor, done = excluded.done",
            (stream, partition, cursor, int(done)),
        )
        self._touch()

    def rewind(self, stream: str) -> None:
        """Every partition of the stream is read again from its start (totals are kept)."""
        self.db.execute("UPDATE cursors SET cursor = NULL, done = 0 WHERE stream = ?", (stream,))
        self._touch()

    def set_total(self, stream: str, total: int | None, partition: str = "") -> None:
        self.db.execute(
            "INSERT INTO cursors (stream, partition_key, total) VALUES (?, ?, ?) "
            "ON CONFLICT(stream, partition_key) DO UPDATE SET total = excluded.total",
            (stream, partition, total),
        )

    # ---- records -------------------------------------------------------------------------
    def state(self, stream: str, source_id: str) -> RecordState | None:
        change = self._changes.get((stream, source_id))
        if change is not None and "state" in change and "target_id" in change and "progress" in change:
            return RecordState(change["state"], change["target_id"], change["progress"])  # type: ignore[arg-type]
        row = self.db.execute(
            "SELECT state, target_id, progress FROM records WHERE stream = ? AND source_id = ?", (stream, source_id)
        ).fetchone()
        return self._overlay(change, None if row is None else _row(*row))

    def _state_over(self, stream: str, source_id: str, row: _StoredRow | None) -> RecordState | None:
        """The state of a record whose stored row was read earlier, with the buffered changes on top."""
        return self._overlay(self._changes.get((stream, source_id)), row)

    @staticmethod
    def _overlay(change: dict[str, object] | None, row: _StoredRow | None) -> RecordState | None:
        if change is None:
            return RecordState(*row) if row else None
        state, target_id, progress = row or (PENDING, None, None)
        return RecordState(
            change.get("state", state),  # type: ignore[arg-type]
            change.get("target_id", target_id),  # type: ignore[arg-type]
            change.get("progress", progress),  # type: ignore[arg-type]
        )

    def states(self, stream: str, source_ids: list[str]) -> StateSnapshot:
        """The states of one page's records in one query; see :class:`StateSnapshot`."""
        rows: dict[str, _StoredRow] = {}
        for start in range(0, len(source_ids), 500):
            chunk = source_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sid, state, target_id, progress in self.db.execute(
                f"SELECT source_id, state, target_id, progress FROM records WHERE stream = ? AND source_id IN ({marks})",
                (stream, *chunk),
            ):
                # inline, not _row(): this runs for every record read, and most have no progress
                rows[sid] = (state, target_id, None if progress is None else _decode_progress(progress))
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

    def save_progress(self, stream: str, source_id: str, progress: WriteProgress | None) -> None:
        self._set(stream, source_id, progress=progress)

    def mark_written(self, stream: str, source_id: str, target_id: str, key: str, *, found: bool = False) -> None:
        """`key`: the natural key as the target compares it (what `owner_of` looks for); `found`:
        the target held it already, identical, before this migration wrote anything."""
        self._set(stream, source_id, state=WRITTEN, target_id=target_id, progress=FOUND if found else None,
                  reason=None, key=key)

    def mark_skipped(
        self, stream: str, source_id: str, reason: str, target_id: str | None = None, key: str | None = None
    ) -> None:
        """A record left behind on purpose; `target_id` (and `key`) when it exists in the target all
        the same, left as it was there: its children can still be attached to it (and are looked up
        before a non-idempotent write, like those of a found record)."""
        if target_id is None:
            self._set(stream, source_id, state=SKIPPED, reason=reason)
        else:
            self._set(stream, source_id, state=SKIPPED, reason=reason, target_id=target_id, key=key, progress=FOUND)

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
        self._set(stream, source_id, state=DEAD, reason=f"{error_class}: {message}", progress=None)
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
        """Records per stream as the source announced them, summed over its partitions."""
        return {s: t for s, t in self.db.execute("SELECT stream, sum(total) FROM cursors GROUP BY stream")}

    def status_summary(self) -> Summary:
        counts = self.counts()
        cursors = [
            CursorRow(stream, partition, cursor, bool(done), total)
            for stream, partition, cursor, done, total in self.db.execute(
                "SELECT stream, partition_key, cursor, done, total FROM cursors ORDER BY rowid"
            )
        ]
        runs = [RunRow(*row) for row in self.db.execute("SELECT id, started, finished, outcome, mode FROM runs ORDER BY id")]
        dead = {
            (stream, cls): n
            for stream, cls, n in self.db.execute(
                "SELECT stream, error_class, count(*) FROM dead_letters GROUP BY stream, error_class"
            )
        }
        return Summary(counts, cursors, runs, dead)

    # ---- the dry run's snapshot of what the target already holds (scratch ledgers only) --------
    def _ensure_target_snapshot(self) -> None:
        if not self._target_snapshot:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS target_keys (stream TEXT, key TEXT, fields BLOB, PRIMARY KEY (stream, key))"
            )
            self._target_snapshot = True

    def remember_target(self, stream: str, rows: Iterable[tuple[str, Any]]) -> None:
        """Note records the target holds, as (natural key as the target compares it, carried fields);
        of two rows with one key the first is kept."""
        self._ensure_target_snapshot()
        self.db.executemany(
            "INSERT OR IGNORE INTO target_keys VALUES (?, ?, ?)",
            [(stream, key, orjson.dumps(fields)) for key, fields in rows],
        )

    def target_fields(self, stream: str, key: str) -> Any:
        """The carried fields remembered for this key, or None when the target does not hold it."""
        self._ensure_target_snapshot()
        row = self.db.execute("SELECT fields FROM target_keys WHERE stream = ? AND key = ?", (stream, key)).fetchone()
        return None if row is None else orjson.loads(row[0])


class StateSnapshot:
    """One page's record states read in one query, answering as the ledger would now.

    Exact while the ledger has not applied its buffer since the snapshot was taken (every change
    made since is still in the buffer, which is consulted first); after that it asks the ledger.
    """

    __slots__ = ("_ledger", "_stream", "_rows", "_applied")

    def __init__(self, ledger: Ledger, stream: str, rows: dict[str, _StoredRow]):
        self._ledger, self._stream, self._rows, self._applied = ledger, stream, rows, ledger.applied

    def get(self, source_id: str) -> RecordState | None:
        ledger = self._ledger
        if ledger.applied != self._applied:
            return ledger.state(self._stream, source_id)
        return ledger._state_over(self._stream, source_id, self._rows.get(source_id))
