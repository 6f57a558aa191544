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
    ledger.mark_written("users", "a", "alice", "alice")
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
    ledger.mark_written("users", "a", "alice", "alice")
    ledger.commit()
    ledger.mark_written("users", "b", "bob", "bob")  # then the process dies: no commit, no close
    assert on_disk(tmp_path / "l.sqlite") == {
        "a": (WRITTEN, "alice", None, 0),
        "b": (PENDING, None, None, 0),
    }


def test_a_page_snapshot_answers_as_the_ledger_does_now(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a", "b", "c"])
    ledger.mark_written("users", "a", "alice", "alice")
    ledger.commit()
    snapshot = ledger.states("users", ["a", "b", "c", "d"])
    assert snapshot.get("a") == RecordState(WRITTEN, "alice", None)
    assert snapshot.get("d") is None
    ledger.mark_written("users", "b", "bob", "bob")  # after the snapshot, still buffered
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
    ledger.mark_written("users", "a", "alice", "alice")
    assert ledger.owner_of("users", "alice", "b") == "a"  # before the commit
    assert ledger.owner_of("users", "alice", "a") is None  # its own key
    ledger.commit()
    assert ledger.owner_of("users", "alice", "b") == "a"  # and after
    assert ledger.counts() == {"users": {WRITTEN: 1, PENDING: 1}}
    ledger.close()


def test_cursors_and_totals_are_kept_per_partition(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.set_cursor("users", "page-3")  # a stream read as one: the default partition
    ledger.set_cursor("attempts", "2026-01-01", "course-1")
    ledger.set_cursor("attempts", "2026-02-01", "course-2", done=True)
    ledger.set_total("attempts", 40, "course-1")
    ledger.set_total("attempts", 2, "course-2")
    ledger.set_total("users", 7)
    ledger.close()
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.cursor("users") == ("page-3", False)
    assert ledger.cursor("attempts", "course-1") == ("2026-01-01", False)
    assert ledger.cursor("attempts", "course-2") == ("2026-02-01", True)
    assert ledger.cursor("attempts") == (None, False)  # a partition never read starts from the beginning
    assert ledger.stream_totals() == {"users": 7, "attempts": 42}
    ledger.set_cursor("attempts", "2026-03-01", "course-1", done=True)  # one partition moves, not the other
    assert ledger.cursor("attempts", "course-2") == ("2026-02-01", True)
    ledger.rewind("attempts")
    assert ledger.cursor("attempts", "course-1") == ledger.cursor("attempts", "course-2") == (None, False)
    assert ledger.cursor("users") == ("page-3", False)
    assert ledger.status_summary().cursors == [
        CursorRow("users", "", "page-3", False, 7),
        CursorRow("attempts", "course-1", None, False, 40),
        CursorRow("attempts", "course-2", None, False, 2),
    ]
    ledger.close()


def test_write_progress_round_trips_through_the_file(tmp_path: Path) -> None:
    progress = WriteProgress("enroll", "job-7", {"session": 12, "seats": ["a", "b"]})
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("attempts", ["a", "b"])
    ledger.save_progress("attempts", "a", progress)
    ledger.commit()
    assert on_disk(tmp_path / "l.sqlite")["a"][2] == (
        '{"step":"enroll","job_id":"job-7","data":{"session":12,"seats":["a","b"]}}'
    )
    ledger.close()
    resumed = Ledger(tmp_path / "l.sqlite")
    assert resumed.state("attempts", "a") == RecordState(PENDING, None, progress)
    snapshot = resumed.states("attempts", ["a", "b"])
    assert snapshot.get("a") == RecordState(PENDING, None, progress)
    assert snapshot.get("b") == RecordState(PENDING, None, None)
    resumed.save_progress("attempts", "a", WriteProgress("confirm"))  # the next step replaces it
    assert snapshot.get("a") == RecordState(PENDING, None, WriteProgress("confirm"))
    resumed.mark_written("attempts", "a", "t-1", "t-1")  # a finished write keeps no progress
    resumed.commit()
    assert on_disk(tmp_path / "l.sqlite")["a"] == (WRITTEN, "t-1", None, 0)
    resumed.close()


async def test_a_write_item_saves_its_progress_into_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a"])

    async def store(progress: WriteProgress | None) -> None:
        ledger.save_progress("users", "a", progress)

    item = WriteItem(stream="users", source_id="a", encoded=Encoded({}, "alice"), progress=None,
                     store_progress=store, stats=RequestStats())
    await item.save_progress("create", "17")
    assert item.progress == WriteProgress("create", "17")
    ledger.close()
    assert on_disk(tmp_path / "l.sqlite")["a"][2] == '{"step":"create","job_id":"17"}'
    resumed = Ledger(tmp_path / "l.sqlite")
    assert resumed.state("users", "a") == RecordState(PENDING, None, WriteProgress("create", "17"))
    resumed.close()


# the schema as ledgers were written before partitions and WriteProgress (`key` came one version earlier)
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, outcome TEXT, mode TEXT);
CREATE TABLE cursors (stream TEXT PRIMARY KEY, cursor TEXT, done INTEGER NOT NULL DEFAULT 0, total INTEGER);
CREATE TABLE records (
    stream TEXT NOT NULL, source_id TEXT NOT NULL, state TEXT NOT NULL,
    target_id TEXT, token TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (stream, source_id)) WITHOUT ROWID;
CREATE TABLE losses (
    stream TEXT NOT NULL, field TEXT NOT NULL, reason TEXT NOT NULL, records INTEGER NOT NULL,
    PRIMARY KEY (stream, field, reason)) WITHOUT ROWID;
CREATE TABLE dead_letters (
    stream TEXT NOT NULL, source_id TEXT NOT NULL, error_class TEXT NOT NULL, message TEXT NOT NULL,
    status INTEGER, payload TEXT, created REAL NOT NULL, PRIMARY KEY (stream, source_id)) WITHOUT ROWID;
CREATE VIEW id_map AS SELECT stream AS entity, source_id, target_id FROM records WHERE state = 'written';
"""


def write_old_ledger(path: Path, *, with_keys: bool) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    if with_keys:
        db.execute("ALTER TABLE records ADD COLUMN key TEXT")
        db.execute("CREATE INDEX records_key ON records (stream, key)")
    records = [
        ("users", "1", "in_flight", None, "create:17", 1),
        ("users", "2", "in_flight", None, "deactivate:5", 2),
        ("users", "3", "written", "Alice", None, 1),
        ("users", "4", "pending", None, None, 0),
        ("users", "5", "in_flight", None, "create:", 1),  # saved before a status id came back
    ]
    db.executemany(
        "INSERT INTO records (stream, source_id, state, target_id, token, attempts, updated) VALUES (?, ?, ?, ?, ?, ?, 0)",
        records,
    )
    if with_keys:
        db.execute("UPDATE records SET key = 'alice' WHERE source_id = '3'")
    db.executemany("INSERT INTO cursors VALUES (?, ?, ?, ?)", [("users", "500", 0, 900), ("groups", "30", 1, None)])
    db.execute("INSERT INTO runs (started, finished, outcome, mode) VALUES (1.0, 2.0, 'stopped', 'run')")
    db.commit()
    db.close()


@pytest.mark.parametrize("with_keys", [True, False], ids=["previous-version", "before-natural-keys"])
def test_an_old_ledger_is_upgraded_in_place_and_resumes(tmp_path: Path, with_keys: bool) -> None:
    path = tmp_path / "old.sqlite"
    write_old_ledger(path, with_keys=with_keys)
    for _ in range(2):  # the second open finds it upgraded and changes nothing
        ledger = Ledger(path)
        assert ledger.state("users", "1") == RecordState(IN_FLIGHT, None, WriteProgress("create", "17"))
        assert ledger.state("users", "2") == RecordState(IN_FLIGHT, None, WriteProgress("deactivate", "5"))
        assert ledger.state("users", "5") == RecordState(IN_FLIGHT, None, WriteProgress("create", None))
        assert ledger.states("users", ["1", "3", "4"]).get("1") == RecordState(IN_FLIGHT, None, WriteProgress("create", "17"))
        assert ledger.state("users", "3") == RecordState(WRITTEN, "Alice", None)
        assert ledger.state("users", "4") == RecordState(PENDING, None, None)
        assert ledger.owner_of("users", "alice", "9") == "3"
        assert ledger.cursor("users") == ("500", False)
        assert ledger.cursor("groups") == ("30", True)
        assert ledger.stream_totals() == {"users": 900, "groups": None}
        assert [run.outcome for run in ledger.status_summary().runs] == ["stopped"]
        ledger.close()
    assert on_disk(path)["1"] == (IN_FLIGHT, None, '{"step":"create","job_id":"17"}', 1)
    ledger = Ledger(path)
    ledger.set_cursor("users", "600", "org-2")  # partitions work on the upgraded table
    assert (ledger.cursor("users"), ledger.cursor("users", "org-2")) == (("500", False), ("600", False))
    ledger.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'cursors_unpartitioned'").fetchone() == (0,)
    assert db.execute("SELECT entity, source_id, target_id FROM id_map").fetchall() == [("users", "3", "Alice")]
    db.close()


def test_status_summary_counts_what_the_ledger_holds(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    run = ledger.begin_run("run")
    ledger.add_pending("users", ["a", "b", "c"])
    ledger.mark_written("users", "a", "alice", "alice")
    ledger.mark_dead("users", "b", "conflict", "user 'b' exists", 409, None)
    ledger.mark_dead("users", "c", "conflict", "user 'c' exists", 409, None)
    ledger.end_run(run, "partial")
    summary = ledger.status_summary()
    assert summary.counts == {"users": {WRITTEN: 1, DEAD: 2}}
    assert summary.dead_letters == {("users", "conflict"): 2}
    assert [(r.id, r.outcome, r.mode) for r in summary.runs] == [(run, "partial", "run")]
    ledger.close()


def test_the_dry_run_snapshot_answers_by_key_and_keeps_the_first(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "dry.sqlite")
    assert ledger.target_fields("users", "alice") is None  # nothing remembered yet
    ledger.remember_target("users", [("alice", {"groups": ["A"]}), ("bob", {"groups": []})])
    ledger.remember_target("users", [("alice", {"groups": ["B"]})])
    assert ledger.target_fields("users", "alice") == {"groups": ["A"]}
    assert ledger.target_fields("users", "bob") == {"groups": []}
    assert ledger.target_fields("groups", "alice") is None
    ledger.close()


def test_a_reader_closing_without_commit_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_pending("users", ["a"])
    ledger.commit()
    ledger.mark_written("users", "a", "alice", "alice")
    ledger.close(commit=False)
    assert on_disk(tmp_path / "l.sqlite")["a"] == (PENDING, None, None, 0)


def test_status_shows_partitions_runs_and_dead_letters_without_writing(tmp_path: Path) -> None:
    from migrator import api

    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    run = ledger.begin_run("run")
    ledger.add_pending("users", ["a", "b"])
    ledger.mark_written("users", "a", "alice", "alice")
    ledger.mark_dead("users", "b", "conflict", "user 'b' exists", 409, None)
    ledger.set_cursor("users", "100", done=True)
    ledger.set_cursor("attempts", "c9", "course-1")
    ledger.end_run(run, "partial")
    ledger.close()
    before = path.read_bytes()
    shown = api.status(path)
    assert path.read_bytes() == before
    started, finished = shown["runs"][0].pop("started"), shown["runs"][0].pop("finished")
    assert started <= finished
    assert shown == {
        "streams": {"users": {WRITTEN: 1, DEAD: 1}},
        "cursors": {
            "users": {"cursor": "100", "done": True, "total": None},
            "attempts/course-1": {"cursor": "c9", "done": False, "total": None},
        },
        "runs": [{"id": run, "outcome": "partial", "mode": "run"}],
        "dead_letters": {"users/conflict": 1},
    }
