"""The ledger: every record's fate, the source cursors, the id map and the dead letters, in SQLite.

Writes go to one connection on the event-loop thread and are committed in groups: a writer that
must not send before its intent is durable awaits `durable()`, and every writer that recorded an
intent in the same tick shares one commit. WAL with synchronous=NORMAL survives a killed process
(only an OS crash could lose the newest commits), which is the failure we design for.

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
CREATE INDEX IF NOT EXISTS records_state ON records (stream, state);
CREATE INDEX IF NOT EXISTS records_target ON records (stream, target_id);
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
        self.db.executescript(_SCHEMA)
        self.db.commit()
        self._dirty = 0
        self._last_commit = time.monotonic()
        self._flush: asyncio.Event | None = None

    # ---- commits -------------------------------------------------------------------------
    def commit(self) -> None:
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
        row = self.db.execute(
            "SELECT state, target_id, token FROM records WHERE stream = ? AND source_id = ?", (stream, source_id)
        ).fetchone()
        return RecordState(*row) if row else None

    def owner_of(self, stream: str, target_id: str, other_than: str) -> str | None:
        """The source record already written to this target key, if another one was."""
        row = self.db.execute(
            "SELECT source_id FROM records WHERE stream = ? AND target_id = ? AND source_id != ? LIMIT 1",
            (stream, target_id, other_than),
        ).fetchone()
        return row[0] if row else None

    def add_pending(self, stream: str, source_ids: Iterable[str]) -> None:
        now = time.time()
        rows = [(stream, sid, PENDING, now) for sid in source_ids]
        self.db.executemany(
            "INSERT OR IGNORE INTO records (stream, source_id, state, updated) VALUES (?, ?, ?, ?)", rows
        )
        self._touch(len(rows))

    def _set(self, stream: str, source_id: str, state: str, **cols: object) -> None:
        names = ", ".join(f"{k} = ?" for k in cols)
        extra = f", {names}" if names else ""
        self.db.execute(
            f"UPDATE records SET state = ?, updated = ?{extra} WHERE stream = ? AND source_id = ?",
            (state, time.time(), *cols.values(), stream, source_id),
        )
        self._touch()

    def mark_in_flight(self, stream: str, source_id: str) -> None:
        self.db.execute(
            "UPDATE records SET state = ?, attempts = attempts + 1, updated = ? WHERE stream = ? AND source_id = ?",
            (IN_FLIGHT, time.time(), stream, source_id),
        )
        self._touch()

    def save_token(self, stream: str, source_id: str, token: str | None) -> None:
        self.db.execute(
            "UPDATE records SET token = ?, updated = ? WHERE stream = ? AND source_id = ?",
            (token, time.time(), stream, source_id),
        )
        self._touch()

    def mark_written(self, stream: str, source_id: str, target_id: str) -> None:
        self._set(stream, source_id, WRITTEN, target_id=target_id, token=None, reason=None)

    def mark_skipped(self, stream: str, source_id: str, reason: str) -> None:
        self._set(stream, source_id, SKIPPED, reason=reason)

    def mark_dead(
        self, stream: str, source_id: str, error_class: str, message: str, status: int | None, payload: object
    ) -> None:
        message = self.redact(message)
        text = None if payload is None else self.redact(orjson.dumps(payload, default=str).decode())
        self._set(stream, source_id, DEAD, reason=f"{error_class}: {message}", token=None)
        self.db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (stream, source_id, error_class, message, status, text, time.time()),
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def reopen_dead(self, stream: str, source_id: str, state: str = PENDING) -> None:
        """A dead letter is being re-driven: it becomes pending (or in flight, when its outcome was
        unknown and must be looked up first) and leaves the dead-letter store."""
        self._set(stream, source_id, state, reason=None)
        self.db.execute("DELETE FROM dead_letters WHERE stream = ? AND source_id = ?", (stream, source_id))

    # ---- reading back --------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for stream, state, n in self.db.execute("SELECT stream, state, count(*) FROM records GROUP BY stream, state"):
            out.setdefault(stream, {})[state] = n
        return out

    def dead_letters(self, stream: str | None = None) -> Iterator[DeadLetter]:
        sql = "SELECT stream, source_id, error_class, message, status, payload FROM dead_letters"
        args: tuple[str, ...] = ()
        if stream:
            sql += " WHERE stream = ?"
            args = (stream,)
        for row in self.db.execute(sql + " ORDER BY stream, source_id", args):
            yield DeadLetter(*row)

    def stream_totals(self) -> dict[str, int | None]:
        return {s: t for s, t in self.db.execute("SELECT stream, total FROM cursors")}
