"""The fault matrix: every kind of trouble a real migration meets, each ending exact.

Each case runs a real migration (``api.run`` or the CLI) between the simulators over loopback HTTP
with one kind of fault injected, then proves three things: the fault really happened (simulator
stats, the report's retried / rate_limited counts), ``verify`` finds nothing missing, extra or
different, and Civica holds every expected user and award exactly once.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from migrator import api
from migrator.dates import normalize
from migrator.plan import load_plan
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.base import delivered
from migrator.simulate.server import RunningSim
from migrator.verify import verify
from tests.conftest import DAMSTRA_KEY, Sims, cli_env, start_sims, write_plan
from tests.expected import MAPPED_LESSONS, assert_target_matches, expected_state

# Quick retries: the faults are dense, the test must stay short; 12 attempts make a give-up negligible.
FAST_RETRIES = "backoff_base = 0.02\nbackoff_cap = 0.2\nmax_retries = 12"


@contextmanager
def running(damstra: dict[str, Any] | None = None, civica: dict[str, Any] | None = None) -> Iterator[Sims]:
    d, c = start_sims(damstra, civica)
    with d, c:
        yield Sims(d, c)


def sim_stats(sim: RunningSim) -> dict[str, Any]:
    return sim.call(lambda s: {**s.stats.snapshot(), **s.platform_stats()}, sim.sim)


def dead_letters(folder: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(folder / "ledger.sqlite")
    try:
        return db.execute("SELECT stream, source_id, error_class, message, status FROM dead_letters").fetchall()
    finally:
        db.close()


def ledger_rows(folder: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(folder / "ledger.sqlite")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def plan_with(tmp_path: Path, sims: Sims, *, page_size: int | None = None, **kw: Any) -> Path:
    path = write_plan(tmp_path, sims, **kw)
    if page_size is not None:
        path.write_text(path.read_text().replace("[source.limits]", f"page_size = {page_size}\n[source.limits]", 1))
    return path


async def migrate_exactly(sims: Sims, tmp_path: Path, **plan_kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run, then insist on: no dead letters, verify ok, Civica == the valid Damstra records, once each."""
    plan = load_plan(plan_with(tmp_path, sims, **plan_kw))
    report = await api.run(plan)
    assert report["totals"]["dead_lettered"] == 0, dead_letters(tmp_path)[:10]
    assert report["run"]["outcome"] == "complete"
    result = await verify(plan)
    assert result["ok"], result
    assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))
    return report, result


# ----------------------------------------------------------------------------- 429 storms
@pytest.mark.parametrize("retry_after", ["seconds", "date", "none"])
@pytest.mark.parametrize("plan_rate", ["adaptive", "too_high"])
async def test_429_storm_on_civica(tmp_path: Path, retry_after: str, plan_rate: str) -> None:
    # Civica allows 20 requests/s; the plan either does not know it (adaptive, starting far above it at
    # 200/s, so a storm is certain before the rate comes down) or claims 200/s.
    limits = "concurrency = 16\nbackoff_base = 0.05\nadaptive_start = 200"
    if plan_rate == "too_high":
        limits += "\nrate = 200\nburst = 20"
    users = 18 if plan_rate == "adaptive" else 12
    with running({"records": users}, {"rate": 20, "burst": 10, "retry_after": retry_after}) as sims:
        report, _ = await migrate_exactly(sims, tmp_path, target_limits=limits)
        assert report["totals"]["rate_limited"] >= 3  # a storm, not a single 429
        assert sim_stats(sims.civica)["by_status"].get("429", 0) >= 3


async def test_429_storm_on_damstra(tmp_path: Path) -> None:
    # the source side too: adaptive (Damstra's limits are undocumented), HTTP-date Retry-After
    with running({"records": 18, "rate": 30, "burst": 10, "retry_after": "date"}) as sims:
        limits = "concurrency = 8\nbackoff_base = 0.05\nadaptive_start = 200"
        report, _ = await migrate_exactly(sims, tmp_path, source_limits=limits)
        assert report["totals"]["rate_limited"] >= 3
        assert sim_stats(sims.damstra)["by_status"].get("429", 0) >= 3


# ----------------------------------------------------------------------------- 5xx bursts
async def test_bursts_of_5xx_on_both_sides(tmp_path: Path) -> None:
    # 30% of all answers are 5xx. (At 45%, a request failing 13 times in a row is no longer negligible
    # over a run's ~500 requests, and the test would measure luck rather than the engine.)
    faults = "500=0.1,502=0.1,503=0.1"
    with running({"records": 60, "faults": faults + ",seed=5"}, {"faults": faults + ",after=0.5,seed=6"}) as sims:
        limits = f"concurrency = 16\n{FAST_RETRIES}"
        report, _ = await migrate_exactly(sims, tmp_path, target_limits=limits, source_limits=limits)
        assert report["totals"]["retried"] > 0
        for side in (sims.damstra, sims.civica):
            faults_seen = sim_stats(side)["faults"]
            assert all(faults_seen.get(str(s), 0) > 0 for s in (500, 502, 503)), faults_seen
        assert sim_stats(sims.civica)["faults"].get("after", 0) > 0  # some writes were applied, then failed


# ----------------------------------------------------------------------------- broken connections
@pytest.mark.parametrize("kind", ["drop", "truncate", "badjson"])
async def test_broken_connections_on_both_sides(tmp_path: Path, kind: str) -> None:
    # drop: reset before any byte of the answer; truncate: half a body, then reset (mid-body);
    # badjson: a complete-looking 200 whose JSON is cut short. Writes: after=0.5 = applied, then broken.
    spec = f"{kind}=0.2"
    with running({"records": 60, "faults": spec + ",seed=7"}, {"faults": spec + ",after=0.5,seed=8"}) as sims:
        limits = f"concurrency = 16\n{FAST_RETRIES}"
        report, _ = await migrate_exactly(sims, tmp_path, target_limits=limits, source_limits=limits)
        assert report["totals"]["retried"] > 0
        assert sim_stats(sims.damstra)["faults"].get(kind, 0) > 0
        civica = sim_stats(sims.civica)["faults"]
        assert civica.get(kind, 0) > 0, civica
        if kind != "badjson":  # a garbled answer always follows a served request
            assert civica.get("after", 0) > 0, civica


# ----------------------------------------------------------------------------- slower than the timeout
async def test_answers_slower_than_the_timeout_on_both_sides(tmp_path: Path) -> None:
    spec = "slow=0.08,slow_delay=1.5s"
    with running({"records": 50, "faults": spec + ",seed=9"}, {"faults": spec + ",after=0.5,seed=10"}) as sims:
        limits = f"concurrency = 16\ntimeout = 0.5\n{FAST_RETRIES}"
        report, _ = await migrate_exactly(sims, tmp_path, target_limits=limits, source_limits=limits)
        assert report["totals"]["retried"] > 0
        assert sim_stats(sims.damstra)["faults"].get("slow", 0) > 0
        civica = sim_stats(sims.civica)["faults"]
        assert civica.get("slow", 0) > 0 and civica.get("after", 0) > 0, civica


# ----------------------------------------------------------------------------- Civica async status ends 3
@pytest.mark.parametrize(
    ("civica", "counter"),
    [
        ({"status_fail": 0.25, "seed": 2}, "failed_ops"),  # status 3 after the usual delay
        ({"status_stuck": 0.25, "status_stuck_for": 1.0, "seed": 3}, "stuck_ops"),  # pending 1 s, then 3
    ],
    ids=["status_fail", "status_stuck"],
)
async def test_setuser_status_that_ends_failed_is_resent(tmp_path: Path, civica: dict[str, Any], counter: str) -> None:
    with running({"records": 40}, civica) as sims:
        await migrate_exactly(sims, tmp_path)
        stats = sim_stats(sims.civica)
        assert stats[counter] > 0, stats
        state = sims.civica_state()
        # every failed op was sent again: more SetUser calls than users and deactivations
        expected = expected_state(sims.damstra.sim)["users"]
        inactive = sum(1 for u in expected.values() if not u["active"])
        assert sum(state["set_user_calls"].values()) > len(expected) + inactive


# ----------------------------------------------------------------------------- key revoked mid-run
def _install_rotation(sims: Sims, after: int, new_key: str) -> None:
    """Once `after` Damstra answers went out, the key is regenerated: the old one is refused from then on."""
    sim: DamstraSimulator = sims.damstra.sim  # type: ignore[assignment]
    seen = [0]

    def hook(request: Any, resp: Any) -> None:
        seen[0] += 1
        if seen[0] == after:
            sim.rotate_key(new_key)

    sims.damstra.call(lambda: setattr(sim, "on_served", hook))


def _no_dead_letters_and_nothing_lost(tmp_path: Path) -> None:
    assert dead_letters(tmp_path) == []
    states = dict(ledger_rows(tmp_path, "SELECT state, count(*) FROM records GROUP BY state"))
    assert "dead" not in states, states


async def test_key_revoked_mid_run_stops_the_api_run_then_resume_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_key = "dk-rotated-5b21c9"
    with running({"records": 120, "faults": "latency=5ms"}) as sims:
        _install_rotation(sims, 8, new_key)
        path = plan_with(tmp_path, sims, page_size=20)
        with pytest.raises(api.MigrationError) as err:
            await api.run(load_plan(path))
        text = str(err.value)
        assert "credentials" in text and "source" in text and DAMSTRA_KEY not in text and new_key not in text
        assert sims.damstra.call(lambda s: s.stats.by_status.get(401, 0), sims.damstra.sim) >= 1
        _no_dead_letters_and_nothing_lost(tmp_path)

        monkeypatch.setenv("TEST_DAMSTRA_KEY", new_key)
        plan = load_plan(path)
        report = await api.run(plan, resume=True)
        assert report["run"]["outcome"] == "complete" and report["totals"]["dead_lettered"] == 0
        assert (await verify(plan))["ok"]
        assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))


def test_key_revoked_mid_run_cli_exits_3_with_one_line_then_resume(tmp_path: Path) -> None:
    new_key = "dk-rotated-9e07aa"
    with running({"records": 120, "faults": "latency=5ms"}) as sims:
        _install_rotation(sims, 8, new_key)
        plan = plan_with(tmp_path, sims, page_size=20)
        cmd = [sys.executable, "-m", "migrator.cli", "run", str(plan), "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=60)
        assert done.returncode == 3, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "credentials" in lines[0], done.stderr
        assert DAMSTRA_KEY not in done.stderr + done.stdout
        _no_dead_letters_and_nothing_lost(tmp_path)

        env = cli_env() | {"TEST_DAMSTRA_KEY": new_key}
        resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=60)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        checked = subprocess.run(
            [sys.executable, "-m", "migrator.cli", "verify", str(plan)], capture_output=True, text=True, env=env,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
        assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))


# ----------------------------------------------------------------------------- records change while listed
def _jsonl_rows(records: int, seed: int) -> list[dict[str, Any]]:
    """A generated tenant as loadable rows, so the simulator can insert and delete users."""
    data = DamstraSimulator(records=records, seed=seed).data
    rows: list[dict[str, Any]] = [{"kind": "group", **data.group(g)} for g in data.group_list()]
    rows += [{"kind": "lesson", **x} for x in data.lesson_list()]
    for i in range(records):
        rows.append({"kind": "user", **data.user(i)})
        rows += [{"kind": "schedule", **s} for s in data.schedules(i)]
    return rows


def _new_user(n: int, group_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    user = {"userName": f"inserted{n:02d}", "firstName": "Ins", "lastName": f"Erted{n}",
            "emailAddress": f"inserted{n}@example.org", "employeeNumber": f"I{n:04d}", "active": True,
            "clientStatusId": 56, "groups": [{"id": group_id}], "timeZone": "UTC"}
    schedules = [{"id": 9_000_000 + n * 4 + j, "lessonId": lesson, "lessonName": f"Lesson {lesson}", "status": "completed",
                  "lessonCompletedDate": f"2023-0{j + 1}-1{n % 10}T08:30:00.000Z"} for j, lesson in enumerate((101, 105))]
    return user, schedules


async def test_users_inserted_and_deleted_while_the_listing_is_read(tmp_path: Path) -> None:
    page, users = 10, 120
    rows = _jsonl_rows(users, seed=4)
    first_page_ids = [r["id"] for r in rows if r["kind"] == "user"][:page]
    doomed = [first_page_ids[1], first_page_ids[4], first_page_ids[8]]  # behind every reader's offset
    served: dict[str, int] = {}
    inserted: list[dict[str, Any]] = []

    def hook(request: Any, resp: Any) -> None:
        if request.path.rstrip("/") != "/api/v2/user" or resp.status != 200 or not delivered(resp):
            return
        start = request.query.get("startIndex", "0")
        served[start] = served.get(start, 0) + 1
        # Both readers (users, certificates) ask for the same offsets until something changes: the first
        # offset past page 1 served twice means page 1 is behind both of them.
        if not inserted and int(start) >= page and served[start] == 2:
            for uid in doomed:
                sim.delete_user(uid)
            for n in (1, 2):
                inserted.append(sim.insert_user(*_new_user(n, group_id=1)))
        if len(inserted) == 2 and int(start) >= 6 * page:
            inserted.append(sim.insert_user(*_new_user(3, group_id=2)))

    with running({"data": rows, "faults": "latency=10ms", "on_served": hook}) as sims:
        sim: DamstraSimulator = sims.damstra.sim  # type: ignore[assignment]
        plan = load_plan(plan_with(tmp_path, sims, page_size=page))
        report = await api.run(plan)
        assert len(inserted) == 3, served  # the mutations happened mid-run
        assert report["totals"]["dead_lettered"] == 0, dead_letters(tmp_path)[:10]

        result = await verify(plan)
        for stream in ("users", "certificates"):
            entry = result["streams"][stream]
            assert entry["missing"] == 0, (stream, entry["missing_samples"])
            assert entry["mismatched"] == 0, (stream, entry["mismatch_samples"])

        # the only extras: the deleted users (migrated before they went) and their awards
        gone = {str(uid) for uid in doomed}
        written = dict(ledger_rows(tmp_path, "SELECT source_id, target_id FROM records WHERE stream = 'users' "
                                             "AND state = 'written'"))
        assert gone <= set(written), "users deleted behind the cursor had been read and must have been migrated"
        deleted_names = {written[uid] for uid in gone}
        assert result["streams"]["users"]["extra"] == len(deleted_names)
        assert set(result["streams"]["users"]["extra_samples"]) == deleted_names

        state = sims.civica_state()
        expected = expected_state(sim)
        assert set(state["users"]) - set(expected["users"]) == deleted_names
        assert set(expected["users"]) <= set(state["users"])
        assert {u["userName"] for u in inserted} <= set(state["users"])
        doomed_rows = [r for r in rows if r["kind"] == "schedule" and r["userId"] in set(doomed)]
        doomed_awards = {
            (written[str(s["userId"])], f"CERT-{s['lessonId']}", normalize(s["lessonCompletedDate"], "d"))
            for s in doomed_rows if s["status"] == "completed" and s["lessonId"] in MAPPED_LESSONS
        }
        awards = state["awards"]
        assert len(awards) == len(set(awards)) and state["duplicate_awards"] == 0
        assert set(awards) - expected["awards"] == doomed_awards
        assert expected["awards"] <= set(awards)
        assert result["streams"]["certificates"]["extra"] == len(doomed_awards)
        assert any(a[0].startswith("inserted") for a in awards)  # inserted users' completions came too


@pytest.mark.parametrize("page_size", [1, 3, 5, 7])
async def test_small_pages_read_every_record(tmp_path: Path, page_size: int) -> None:
    # pages no bigger than any overlap a reader keeps between pages must still move forward to the end
    with running({"records": 23}) as sims:
        report, _ = await migrate_exactly(sims, tmp_path, page_size=page_size)
        assert report["streams"]["users"]["read"] == 23



async def test_429_storm_from_a_plan_rate_far_above_a_small_burst(tmp_path: Path) -> None:
    # The plan claims 200/s with bursts of 40; Civica allows 20/s with bursts of 2. After every host pause
    # the queued requests go out together and most meet another 429: a request must not give up for that.
    limits = "concurrency = 32\nbackoff_base = 0.05\nrate = 200\nburst = 40"
    with running({"records": 12}, {"rate": 20, "burst": 2, "retry_after": "seconds"}) as sims:
        report, _ = await migrate_exactly(sims, tmp_path, target_limits=limits)
        assert report["totals"]["rate_limited"] >= 5
