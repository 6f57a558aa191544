"""The careless path is safe: the slips of issue #8 (items 1-5 and 15), each reproduced end to end.

Each test runs the real CLI (or the API) against the simulators over loopback and proves with the
Civica simulator's own counters that nothing was written twice or overwritten.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from migrator import api
from migrator.plan import load_plan
from migrator.platforms.civica.simulator import CivicaSimulator, default_profile_fields
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.server import RunningSim
from tests.conftest import CIVICA_KEY, DAMSTRA_KEY, Sims, cli_env, write_plan
from tests.expected import assert_target_matches, expected_state
from tests.test_hostile_data import sched, user


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator.cli", *args], capture_output=True, text=True, env=cli_env(), timeout=180
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("migrator: error: "), stderr
    return lines[0]


@contextmanager
def running(damstra: DamstraSimulator, civica: CivicaSimulator) -> Iterator[Sims]:
    with RunningSim(damstra) as d, RunningSim(civica) as c:
        yield Sims(d, c)


def civica(**options: Any) -> CivicaSimulator:
    return CivicaSimulator(api_key=CIVICA_KEY, **{"status_delay": 0.02, **options})


def ledger_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def set_stream_option(plan: Path, stream: str, line: str) -> None:
    text = plan.read_text()
    head = f"[streams.{stream}]\n"
    assert head in text
    plan.write_text(text.replace(head, head + line + "\n"))


# ---- 1. a resume without its ledger -------------------------------------------------------------------


def test_resume_without_its_ledger_refuses_and_writes_nothing(tmp_path: Path) -> None:
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=40, seed=3), civica()) as sims:
        plan = write_plan(tmp_path, sims)
        first = cli("run", str(plan), "--quiet")
        assert first.returncode in (0, 1), first.stderr
        before = sims.civica_state()
        assert before["award_calls"] > 0

        # the ledger was moved (or the plan's path is wrong): --resume must not start over
        plan.write_text(plan.read_text().replace('ledger = "ledger.sqlite"', 'ledger = "moved/ledger.sqlite"'))
        again = cli("run", str(plan), "--resume", "--quiet")
        line = one_error_line(again.stderr)
        assert again.returncode == 2
        assert f"no ledger at {tmp_path / 'moved' / 'ledger.sqlite'}" in line and "run without --resume" in line
        after = sims.civica_state()
        assert after["award_calls"] == before["award_calls"] and after["set_user_calls"] == before["set_user_calls"]
        assert not (tmp_path / "moved" / "ledger.sqlite").exists()


# ---- 2. records that already existed in the target ------------------------------------------------------


def _someone_else(tmp_path: Path, username: str) -> Path:
    """A Civica portal that already holds `username`, created by somebody else, before the migration."""
    data = tmp_path / "civica.jsonl"
    row = {"kind": "user", "profile": {"username": username, "forename": "Someone", "surname": "Else",
                                       "mail": "someone.else@example.org"}, "groups": ["Their group"]}
    data.write_bytes(orjson.dumps(row) + b"\n")
    return data


def _existing_corpus() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"kind": "group", "id": 1, "name": "Crew", "description": "", "clientId": 1}]
    rows += [user(100 + n, f"user.{n}", f"First{n}", f"Last{n}", groups=[{"id": 1}]) for n in range(6)]
    rows += [sched(9000 + n, 100 + n, 101, f"2021-03-0{n + 1}T05:06:07.000Z") for n in range(6)]
    return rows


def test_a_user_who_existed_before_is_a_conflict_by_default_then_updated_after_choosing(tmp_path: Path) -> None:
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=_existing_corpus())
    with running(damstra, civica(data=_someone_else(tmp_path, "user.3"))) as sims:
        plan = write_plan(tmp_path, sims)

        dry = cli("run", str(plan), "--dry-run", "--quiet", "--report", str(tmp_path / "dry.json"))
        assert dry.returncode == 0, dry.stderr
        report = orjson.loads((tmp_path / "dry.json").read_bytes())
        assert report["streams"]["users"]["dry_run"] == {"would_create": 5, "would_conflict": 1,
                                                          "estimated_write_requests": 15}
        assert report["dry_run"]["would_conflict"] == 1
        assert "users: already in the target: different (dead-lettered as conflict" in dry.stdout

        run = cli("run", str(plan), "--quiet")
        assert run.returncode == 1, run.stderr  # finished, with a dead letter
        state = sims.civica_state()
        profile, groups, _active = state["users"]["user.3"]
        assert profile["forename"] == "Someone" and groups == {"Their group"}  # not overwritten
        assert state["set_user_calls"].get("update", 0) == 0
        (cls, message), = ledger_rows(tmp_path / "ledger.sqlite",
                                      "SELECT error_class, message FROM dead_letters WHERE stream = 'users'")
        assert cls == "conflict" and "user 'user.3' already exists in the target" in message
        assert "forename: 'Someone' in the target, 'First3' from the source" in message
        assert 'streams.users.existing = "update"' in message and "dlq retry" in message
        children = ledger_rows(tmp_path / "ledger.sqlite",
                               "SELECT error_class FROM dead_letters WHERE stream = 'certificates'")
        assert children == [("missing_dependency",)]

        # the admin decides the source wins: update, and re-drive the conflict with its children
        set_stream_option(plan, "users", 'existing = "update"')
        retried = cli("dlq", "retry", str(plan), "--quiet")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        state = sims.civica_state()
        profile, groups, _active = state["users"]["user.3"]
        assert profile["forename"] == "First3" and groups == {"Their group", "Crew"}
        assert state["set_user_calls"]["update"] == 1
        assert len(state["awards"]) == 6 and state["duplicate_awards"] == 0


def test_skip_leaves_an_existing_user_as_it_is_and_still_attaches_its_children(tmp_path: Path) -> None:
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=_existing_corpus())
    with running(damstra, civica(data=_someone_else(tmp_path, "user.2"))) as sims:
        plan = write_plan(tmp_path, sims)
        set_stream_option(plan, "users", 'existing = "skip"')
        run = cli("run", str(plan), "--quiet")
        assert run.returncode == 0, run.stdout + run.stderr
        state = sims.civica_state()
        assert state["users"]["user.2"][0]["forename"] == "Someone"
        assert state["set_user_calls"].get("update", 0) == 0
        assert ("user.2", "CERT-101", "2021-03-03T05:06:07.000Z") in state["awards"]
        ((reason,),) = ledger_rows(tmp_path / "ledger.sqlite",
                                   "SELECT reason FROM records WHERE stream = 'users' AND state = 'skipped'")
        assert "already existed in the target and was left as it is" in reason


def test_an_identical_user_is_ours_after_a_lost_commit(tmp_path: Path) -> None:
    """A kill after SetUser was applied but before the ledger committed: the resumed create meets 409;
    the portal holds exactly what we would write, so it is ours (no conflict, no update)."""
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=60, seed=3), civica()) as sims:
        plan = write_plan(tmp_path, sims)
        assert cli("run", str(plan), "--quiet").returncode in (0, 1)
        before = sims.civica_state()
        ledger = tmp_path / "ledger.sqlite"
        written = ledger_rows(ledger, "SELECT count(*) FROM records WHERE stream = 'users' AND state = 'written'")[0][0]
        db = sqlite3.connect(ledger)  # forget every user outcome, as a kill before the commit would
        db.execute("UPDATE records SET state = 'pending', target_id = NULL, key = NULL WHERE stream = 'users'"
                   " AND state = 'written'")
        db.execute("UPDATE cursors SET cursor = NULL, done = 0 WHERE stream = 'users'")
        db.commit()
        db.close()

        resumed = cli("run", str(plan), "--resume", "--quiet")
        assert resumed.returncode == before_code(ledger), resumed.stderr
        after = sims.civica_state()
        assert after["set_user_calls"].get("update", 0) == 0
        assert after["set_user_calls"]["create"] == before["set_user_calls"]["create"]  # 409s are not applied
        assert ledger_rows(ledger, "SELECT count(*) FROM records WHERE stream = 'users' AND state = 'written'")[0][0] \
            == written
        assert ledger_rows(ledger, "SELECT count(*) FROM dead_letters WHERE error_class = 'conflict'") == [(0,)]
        assert_target_matches(after, expected_state(sims.damstra.sim))


def before_code(ledger: Path) -> int:
    """The exit code a finished run owes: 1 when the ledger holds dead letters."""
    return 1 if ledger_rows(ledger, "SELECT count(*) FROM dead_letters")[0][0] else 0


# ---- 3. natural keys that differ only in case ----------------------------------------------------------


@pytest.mark.parametrize("case_sensitive_portal", [True, False], ids=["portal-case-sensitive", "portal-ignores-case"])
def test_usernames_differing_only_in_case_are_one_key(tmp_path: Path, case_sensitive_portal: bool) -> None:
    rows = [user(201, "Collide", "First", "Person"), user(202, "collide", "Second", "Person"),
            user(203, "other", "Third", "Person")]
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=rows)
    with running(damstra, civica(usernames_case_sensitive=case_sensitive_portal)) as sims:
        plan = write_plan(tmp_path, sims)
        run = cli("run", str(plan), "--quiet")
        assert run.returncode == 1, run.stderr
        state = sims.civica_state()
        assert set(state["users"]) == {"Collide", "other"}
        assert state["users"]["Collide"][0]["forename"] == "First"  # never overwritten by the second
        assert state["set_user_calls"] == {"create": 2}
        (sid, cls, message), = ledger_rows(tmp_path / "ledger.sqlite",
                                           "SELECT source_id, error_class, message FROM dead_letters")
        assert (sid, cls) == ("202", "duplicate_natural_key")
        assert "'collide' is already carried by source record 201" in message and "ignoring case" in message


# ---- 4. a systematic error stops the stream --------------------------------------------------------------


def test_the_same_failure_stops_the_stream_and_resume_after_the_fix_completes(tmp_path: Path) -> None:
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=60, seed=3), civica()) as sims:
        plan = write_plan(tmp_path, sims)
        good = plan.read_text()
        plan.write_text(good.replace('= "CERT-', '= "NO-SUCH-'))  # refs that do not exist in the portal

        dry = cli("run", str(plan), "--dry-run", "--quiet", "--report", str(tmp_path / "dry.json"))
        refs = orjson.loads((tmp_path / "dry.json").read_bytes())["dry_run"]["references"]
        assert refs and all(r["kind"] == "certification" and r["verdict"] == "unconfirmed" for r in refs)
        assert "certification 'NO-SUCH-101'" in dry.stdout and "Civica cannot list certifications" in dry.stdout

        run = cli("run", str(plan), "--quiet", "--report", str(tmp_path / "run.json"))
        assert run.returncode == 3, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
        line = next(x for x in run.stderr.splitlines() if "stream certificates stopped" in x)
        assert "20 writes in a row failed alike (target_rejected:" in line and "certification not found" in line
        assert "--resume" in line
        state = sims.civica_state()
        assert state["awards"] == []
        report = orjson.loads((tmp_path / "run.json").read_bytes())
        certs = report["streams"]["certificates"]
        assert certs["status_counts"]["404"] <= 20 + 16  # the first 20, and those already in flight
        assert certs["dead_lettered"] == 0 and certs["pending"] > 0 and certs["written"] == 0

        plan.write_text(good)  # the fix
        resumed = cli("run", str(plan), "--resume", "--quiet")
        assert resumed.returncode == before_code(tmp_path / "ledger.sqlite"), resumed.stdout + resumed.stderr
        assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))


def test_a_mandatory_profile_field_the_mapping_cannot_fill_is_found_by_the_dry_run(tmp_path: Path) -> None:
    fields = default_profile_fields() | {
        "department": {"label": "Department", "mode": "Mandatory", "order": 150, "type": "SingleChoice",
                       "values": ["Ops", "Sales"]},
    }
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=40, seed=3), civica(profile_fields=fields)) as sims:
        plan = write_plan(tmp_path, sims)
        dry = cli("run", str(plan), "--dry-run", "--quiet")
        assert dry.returncode == 0, dry.stderr
        assert "would reject" in dry.stdout
        assert "would reject 40 users: missing_field: the portal's profile field 'department' (Department) is Mandatory" in dry.stdout

        run = cli("run", str(plan), "--quiet")
        assert run.returncode == 3
        assert "stream users stopped: 20 writes in a row failed alike (missing_field:" in run.stderr
        assert "stream certificates stopped: its parent stream `users` stopped" in run.stderr
        state = sims.civica_state()
        assert state["users"] == {} and state["set_user_calls"] == {} and state["award_calls"] == 0
        dead = ledger_rows(tmp_path / "ledger.sqlite", "SELECT count(*) FROM dead_letters")[0][0]
        assert dead <= 1  # the generator's odd malformed user at most: the rest stays pending for --resume


# ---- 15. fidelity losses count the whole migration ----------------------------------------------------------


async def test_fidelity_losses_after_a_resume_count_the_whole_migration(tmp_path: Path) -> None:
    counts = []
    for name, limits in (("in-one-go", [None]), ("resumed", [70, None])):
        with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=150, seed=3), civica()) as sims:
            plan = load_plan(write_plan(tmp_path / name, sims))
            for n, limit in enumerate(limits):
                report = await api.run(plan, resume=n > 0, limit=limit)
            counts.append({(x["stream"], x["field"]): x["records"] for x in report["fidelity_losses"]})
    assert counts[0] == counts[1]
    assert counts[0][("users", "phone")] > 70  # more than the first run alone carried


# ---- review follow-ups: what else "already existed" and "fails alike" must mean ----------------------------


def test_an_existing_user_with_other_groups_is_a_conflict_too(tmp_path: Path) -> None:
    data = tmp_path / "civica.jsonl"
    same_profile = {"username": "user.1", "forename": "First1", "surname": "Last1", "mail": "user.1@example.org",
                    "timezone": "Australia/Perth"}
    data.write_bytes(orjson.dumps({"kind": "user", "profile": same_profile, "groups": ["Not crew"]}) + b"\n")
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=_existing_corpus())
    with running(damstra, civica(data=data)) as sims:
        plan = write_plan(tmp_path, sims)
        assert cli("run", str(plan), "--quiet").returncode == 1
        (message,), = ledger_rows(tmp_path / "ledger.sqlite", "SELECT message FROM dead_letters WHERE stream = 'users'")
        assert "groups: ['Not crew'] in the target, ['Crew'] from the source" in message
        assert sims.civica_state()["users"]["user.1"][1] == {"Not crew"}


@pytest.mark.parametrize("case_sensitive_portal", [True, False], ids=["portal-case-sensitive", "portal-ignores-case"])
def test_a_source_name_that_differs_from_a_portal_user_only_in_case(tmp_path: Path, case_sensitive_portal: bool) -> None:
    data = tmp_path / "civica.jsonl"
    data.write_bytes(orjson.dumps({"kind": "user", "profile": {"username": "Collide", "forename": "Portal",
                                                               "surname": "Person"}}) + b"\n")
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=[user(301, "collide", "Source", "Person")])
    with running(damstra, civica(data=data, usernames_case_sensitive=case_sensitive_portal)) as sims:
        plan = write_plan(tmp_path, sims)
        run = cli("run", str(plan), "--quiet")
        state = sims.civica_state()
        assert state["users"]["Collide"][0]["forename"] == "Portal"  # never overwritten
        if case_sensitive_portal:  # two users, as the portal itself keeps them apart
            assert run.returncode == 0, run.stdout + run.stderr
            assert state["users"]["collide"][0]["forename"] == "Source"
        else:  # one user to the portal: someone else's, so a conflict
            assert run.returncode == 1
            assert set(state["users"]) == {"Collide"}
            (cls, message), = ledger_rows(tmp_path / "ledger.sqlite", "SELECT error_class, message FROM dead_letters")
            assert cls == "conflict" and "user 'Collide' already exists in the target" in message


def _mixed_awards(pattern: str) -> list[dict[str, Any]]:
    """One user whose completions, in listing order, map to good (g) or unknown (b) certifications."""
    rows: list[dict[str, Any]] = [user(401, "mixed.user", "Mixed", "User")]
    for n, kind in enumerate(pattern):
        lesson = 101 if kind == "g" else 150  # 150 maps to a certification the portal does not have
        rows.append(sched(7000 + n, 401, lesson, f"2021-04-{n + 1:02d}T08:00:00.000Z"))
    return rows


@pytest.mark.parametrize(
    ("pattern", "stop_after", "stops"),
    [("bgbgbgbg", 2, False), ("bgbbgb", 2, True), ("bbbbbb", 0, False)],
    ids=["alternating", "two-in-a-row", "zero-never-stops"],
)
def test_only_failures_in_a_row_stop_a_stream(tmp_path: Path, pattern: str, stop_after: int, stops: bool) -> None:
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=_mixed_awards(pattern))
    with running(damstra, civica()) as sims:
        plan = write_plan(tmp_path, sims)
        plan.write_text(plan.read_text().replace('"150" = "CERT-150"\n', "") + '"150" = "NO-SUCH-CERT"\n')
        text = plan.read_text().replace("[streams.certificates]\nwriters = 16", "[streams.certificates]\nwriters = 1")
        plan.write_text(text)
        set_stream_option(plan, "certificates", f"stop_after_same_failure = {stop_after}")
        run = cli("run", str(plan), "--quiet", "--report", str(tmp_path / "run.json"))
        certs = orjson.loads((tmp_path / "run.json").read_bytes())["streams"]["certificates"]
        bad = pattern.count("b")
        if stops:
            assert run.returncode == 3 and "2 writes in a row failed alike" in run.stderr
            assert certs["dead_lettered"] == 1 and certs["written"] == 1  # the lone failure before the good one
            assert certs["pending"] == len(pattern) - 2
        else:
            assert run.returncode == 1, run.stdout + run.stderr
            assert certs["dead_lettered"] == bad and certs["written"] == len(pattern) - bad and certs["pending"] == 0


def test_starting_over_with_a_new_ledger_awards_nothing_twice(tmp_path: Path) -> None:
    """The refusal of item 1 says "run without --resume" to start a new migration: against a target
    that holds the first run's data, the users are found identical and every award is looked up."""
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=60, seed=3), civica()) as sims:
        plan = write_plan(tmp_path, sims)
        first = cli("run", str(plan), "--quiet")
        before = sims.civica_state()
        plan.write_text(plan.read_text().replace('ledger = "ledger.sqlite"', 'ledger = "fresh.sqlite"'))
        again = cli("run", str(plan), "--quiet")
        assert again.returncode == first.returncode, again.stdout + again.stderr
        after = sims.civica_state()
        assert after["award_calls"] == before["award_calls"] and after["duplicate_awards"] == 0
        assert after["set_user_calls"]["create"] == before["set_user_calls"]["create"]  # the 409s applied nothing
        assert after["set_user_calls"].get("update", 0) == 0
        # Civica's API cannot show a user's active state, so inactive users are deactivated again (idempotent)
        assert after["set_user_calls"]["deactivate"] == 2 * before["set_user_calls"]["deactivate"]
        found = ledger_rows(tmp_path / "fresh.sqlite",
                            "SELECT count(*) FROM records WHERE stream = 'users' AND state = 'written'"
                            " AND progress = '{\"step\":\"found\"}'")
        assert found[0][0] == len(after["users"])
        assert_target_matches(after, expected_state(sims.damstra.sim))


def test_existing_is_refused_on_a_stream_that_cannot_tell(tmp_path: Path) -> None:
    with running(DamstraSimulator(access_key=DAMSTRA_KEY, records=10, seed=3), civica()) as sims:
        plan = write_plan(tmp_path, sims)
        set_stream_option(plan, "certificates", 'existing = "update"')
        run = cli("run", str(plan), "--quiet")
        assert run.returncode == 2
        assert "`streams.certificates.existing`: the civica certificates stream cannot tell" in one_error_line(run.stderr)
