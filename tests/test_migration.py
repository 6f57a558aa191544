"""End to end over loopback HTTP: Damstra simulator → migrator → Civica simulator."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from migrator import api
from migrator.api import MigrationError
from migrator.plan import load_plan
from migrator.verify import verify
from tests.conftest import Sims, write_plan
from tests.expected import assert_target_matches, expected_state


def balanced(report: dict) -> bool:
    return all(s["read"] == s["written"] + s["skipped"] + s["dead_lettered"] for s in report["streams"].values())


async def test_full_migration_carries_everything_once(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims))
    report = await api.run(plan)

    assert report["run"]["outcome"] == "complete"
    assert balanced(report)
    expected = expected_state(sims.damstra.sim)
    assert report["streams"]["users"]["written"] == len(expected["users"])
    assert report["streams"]["certificates"]["written"] == len(expected["awards"])
    assert report["streams"]["certificates"]["skipped"] > 0  # lessons 119/120 have no certification
    for key in ("read", "written", "skipped", "dead_lettered", "retried", "requests", "status_counts",
                "rate_limited", "seconds", "records_per_second"):
        assert key in report["totals"] and key in report["streams"]["users"]
    fields = {(loss["stream"], loss["field"]) for loss in report["fidelity_losses"]}
    assert ("users", "phone") in fields and ("users", "mobile") in fields
    assert_target_matches(sims.civica_state(), expected)

    result = await verify(plan)
    assert result["ok"], result
    assert result["streams"]["users"]["expected"] == len(expected["users"])


async def test_a_second_run_needs_resume_and_resending_nothing(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims))
    await api.run(plan)
    calls = sims.civica_state()
    with pytest.raises(MigrationError, match="--resume"):
        await api.run(plan)
    report = await api.run(plan, resume=True)
    after = sims.civica_state()
    assert after["set_user_calls"] == calls["set_user_calls"]
    assert after["award_calls"] == calls["award_calls"]
    assert balanced(report)


@pytest.mark.parametrize("sims", [{"damstra": {"records": 300, "malformed": 0.05}}], indirect=True)
async def test_malformed_users_are_dead_lettered_with_their_children(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims))
    report = await api.run(plan)
    assert balanced(report)
    dead_users = report["streams"]["users"]["dead_lettered"]
    assert dead_users > 0
    db = sqlite3.connect(plan.ledger_path)
    rows = db.execute("SELECT stream, error_class, message FROM dead_letters").fetchall()
    user_rows = [r for r in rows if r[0] == "users"]
    assert len(user_rows) == dead_users
    assert all(r[1] == "missing_field" and "first_name" in r[2] and "forename" in r[2] for r in user_rows)
    # their completions cannot be awarded: dead-lettered as missing_dependency, not lost
    cert_rows = [r for r in rows if r[0] == "certificates"]
    assert cert_rows and all(r[1] == "missing_dependency" for r in cert_rows)
    assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))
    assert (await verify(plan))["ok"]


async def test_dry_run_writes_nothing_and_estimates(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims, target_limits="rate = 100\nburst = 10"))
    report = await api.run(plan, dry_run=True)
    state = sims.civica_state()
    assert state["users"] == {} and state["award_calls"] == 0 and not state["set_user_calls"]
    expected = expected_state(sims.damstra.sim)
    dry = report["dry_run"]
    groups = len(sims.damstra.sim.data.group_list())
    assert dry["would_create"] == groups + len(expected["users"]) + len(expected["awards"])
    assert dry["would_update"] == 0 and dry["would_reject"] == 0
    assert report["streams"]["users"]["dry_run"]["would_create"] == len(expected["users"])
    assert report["streams"]["certificates"]["dry_run"]["would_create"] == len(expected["awards"])
    assert dry["target_requests"] > len(expected["users"])
    assert dry["target_seconds_at_limit"] == pytest.approx(dry["target_requests"] / 100, rel=0.01)
    assert not plan.ledger_path.exists()


async def test_limit_reads_only_n_records_per_stream(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims))
    report = await api.run(plan, limit=30)
    assert report["streams"]["users"]["read"] == 30
    assert len(sims.civica_state()["users"]) <= 30
