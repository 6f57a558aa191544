"""The ledger's promises, specified on the ledger itself (no HTTP): what a reader sees between
commits, what survives a commit, and what a killed process loses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from migrator.connectors import Encoded, WriteItem
from migrator.http import RequestStats
from migrator.ledger import DEAD, IN_FLIGHT, PENDING, WRITTEN, CursorRow, Ledger, RecordState, WriteProgress


def on_disk(path: Path) -> dict[str, tuple[str, str | None, str | None, int]]:
    """Each record's (state, target id, progress as stored, attempts)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT source_id, state, target_id, progress, attempts FROM records").fetchall()
    finally:
        db.close()
    return {sid: (state, target, progress, attempts) for sid, state, target, progress, attempts in rows}


def test_changes_are_seen_at_once_and_land_as_one_row_at_commit(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a", "b"])
    ledger.commit()
    ledger.mark_in_flight("users", "a")
    ledger.save_progress("users", "a", WriteProgress("create", "17"))
    assert ledger.state("users", "a") == RecordState(IN_FLIGHT, None, WriteProgress("create", "17"))
    assert on_disk(tmp_path / "l.sqlite")["a"][0] == PENDING  # not committed yet
    ledger.mark_written("users", "a", "alice")
    ledger.commit()
    assert on_disk(tmp_path / "l.sqlite")["a"] == (WRITTEN, "alice", None, 1)
    assert ledger.state("users", "a") == RecordState(WRITTEN, "alice", None)
    assert ledger.state("users", "b") == RecordState(PENDING, None, None)
    ledger.close()


def test_progress_from_an_earlier_run_survives_an_intent_that_does_not_touch_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a"])
    ledger.save_progress("users", "a", WriteProgress("create", "9"))
    ledger.close()
    resumed = Ledger(tmp_path / "l.sqlite")
    resumed.mark_in_flight("users", "a")  # the resumed run's intent: the stored status id must stay
    assert resumed.state("users", "a") == RecordState(IN_FLIGHT, None, WriteProgress("create", "9"))
    resumed.mark_in_flight("users", "a")
    resumed.commit()
    assert on_disk(tmp_path / "l.sqlite")["a"] == (IN_FLIGHT, None, '{"step":"create","job_id":"9"}', 2)
    resumed.close()


def test_a_killed_process_loses_only_what_was_never_committed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a", "b"])
    ledger.mark_written("users", "a", "alice")
    ledger.commit()
    ledger.mark_written("users", "b", "bob")  # then the process dies: no commit, no close
    assert on_disk(tmp_path / "l.sqlite") == {
        "a": (WRITTEN, "alice", None, 0),
        "b": (PENDING, None, None, 0),
    }


def test_a_page_snapshot_answers_as_the_ledger_does_now(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a", "b", "c"])
    ledger.mark_written("users", "a", "alice")
    ledger.commit()
    snapshot = ledger.states("users", ["a", "b", "c", "d"])
    assert snapshot.get("a") == RecordState(WRITTEN, "alice", None)
    assert snapshot.get("d") is None
    ledger.mark_written("users", "b", "bob")  # after the snapshot, still buffered
    assert snapshot.get("b") == RecordState(WRITTEN, "bob", None)
    ledger.commit()  # the buffer is applied: the snapshot must not answer from its old rows
    ledger.mark_dead("users", "c", "target_rejected", "no", 400, {"x": 1})
    ledger.commit()
    assert snapshot.get("b") == RecordState(WRITTEN, "bob", None)
    assert snapshot.get("c") == RecordState(DEAD, None, None)
    ledger.close()


def test_a_buffered_write_owns_its_target_key(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a", "b"])
    ledger.mark_written("users", "a", "alice")
    assert ledger.owner_of("users", "alice", "b") == "a"  # before the commit
    assert ledger.owner_of("users", "alice", "a") is None  # its own key
    ledger.commit()
    assert ledger.owner_of("users", "alice", "b") == "a"  # and after
    assert ledger.counts() == {"users": {WRITTEN: 1, PENDING: 1}}
    ledger.close()
