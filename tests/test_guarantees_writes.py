"""Nothing written twice, measured where it can break: the intent is on disk before a non-idempotent
request leaves, an outcome left unknown is looked up before anything is sent again (in the run and
on resume), a stored Civica status id is polled instead of creating again, and two source records
with one user name are never merged however far apart they are read.

Damstra and Civica simulators over real loopback HTTP. Each test names the mutants of
tests/mutants/mutants.toml it exists to kill.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from migrator import api
from migrator.dates import normalize
from migrator.plan import load_plan
from tests.conftest import Sims, start_sims
from tests.expected import MAPPED_LESSONS, expected_state
from tests.guarantee_support import civica_calls, guarantee_plan, ledger_rows, stop_once, tenant

Award = Callable[[dict[str, Any], dict[str, Any]], Any]


@contextmanager
def running(damstra: dict[str, Any] | None = None, civica: dict[str, Any] | None = None) -> Iterator[Sims]:
    d, c = start_sims(damstra, civica)
    with d, c:
        yield Sims(d, c)


def wrap_award_certificate(sims: Sims, wrap: Callable[[Award], Award]) -> None:
    """Put `wrap(original)` in front of the simulator's AwardCertificate (on the simulator's thread)."""
    sim = sims.civica_sim
    sims.civica.call(lambda: sim._apis.__setitem__("AwardCertificate", wrap(sim._apis["AwardCertificate"])))


def award_key(body: dict[str, Any], params: dict[str, Any]) -> tuple[Any, Any, Any]:
    return params.get("uid"), params.get("ref"), (body.get("certification") or {}).get("awardedDate")


def award_sources(damstra: Any) -> dict[tuple[str, str, str], str]:
    """(user name, certification, awarded date) → the completed schedule's source id."""
    data, out = damstra.data, {}
    for i in range(len(data)):
        name = data.user(i)["userName"]
        for s in data.schedules(i):
            if s.get("status") == "completed" and s["lessonId"] in MAPPED_LESSONS:
                out[(name, f"CERT-{s['lessonId']}", normalize(s["lessonCompletedDate"], "d"))] = str(s["id"])
    return out


# ---------------------------------------------------------------- intent before a non-idempotent send


@pytest.mark.parametrize("sims", [{"damstra": {"records": 40}, "civica": {"status_delay": 0.02}}], indirect=True)
async def test_an_award_leaves_only_once_its_intent_is_on_disk(sims: Sims, tmp_path: Path) -> None:
    # mutants intent-after-send, intent-not-recorded, intent-not-durable, durable-without-commit.
    # As each AwardCertificate arrives, the simulator reads the ledger file over a connection of its
    # own: a SIGKILL at that instant must find the record `in_flight`, or a resume would send it again.
    plan = load_plan(guarantee_plan(tmp_path, sims, certificate_writers=4))
    sources = award_sources(sims.damstra.sim)
    seen: list[tuple[Any, str | None]] = []

    def check_first(original: Award) -> Award:
        async def award(body: dict[str, Any], params: dict[str, Any]) -> web.StreamResponse:
            sid = sources.get(award_key(body, params))
            rows = ledger_rows(
                plan.ledger_path, "SELECT state FROM records WHERE stream = 'certificates' AND source_id = ?", sid
            )
            seen.append((sid, rows[0][0] if rows else None))
            return await original(body, params)

        return award

    wrap_award_certificate(sims, check_first)
    report = await api.run(plan)
    assert report["run"]["outcome"] == "complete"
    assert len(seen) == report["streams"]["certificates"]["written"] == len(expected_state(sims.damstra.sim)["awards"])
    early = [s for s in seen if s[1] != "in_flight"]
    assert early == [], f"{len(early)} of {len(seen)} awards were sent before their intent was committed: {early[:5]}"


# ---------------------------------------------------------------- unknown outcomes are looked up first


@pytest.mark.parametrize("sims", [{"damstra": {"records": 60}, "civica": {"status_delay": 0.02}}], indirect=True)
async def test_an_award_whose_answer_was_lost_is_looked_up_and_sent_again_only_if_it_did_not_happen(
    sims: Sims, tmp_path: Path
) -> None:
    # mutants award-resent-without-lookup, award-sent-as-idempotent, award-lookup-always-finds,
    # ambiguous-5xx-resent and http-error-left-pending. Every award's first attempt answers 500: for
    # every other award after Civica applied it, for the rest before. Lesson 101 maps to a
    # certification Civica does not have: those awards are refused (404) and dead-lettered.
    plan = load_plan(
        guarantee_plan(tmp_path, sims, certifications=range(102, 119), extra_certifications='"101" = "CERT-999"')
    )
    attempts: dict[tuple[Any, Any, Any], int] = {}
    lost = {"after": 0, "before": 0}

    def lose_first_answer(original: Award) -> Award:
        async def award(body: dict[str, Any], params: dict[str, Any]) -> web.StreamResponse:
            key = award_key(body, params)
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] > 1 or params.get("ref") == "CERT-999":
                return await original(body, params)
            when = "after" if len(attempts) % 2 else "before"
            if when == "after":
                await original(body, params)
            lost[when] += 1
            return web.json_response({"message": "Internal Server Error"}, status=500)

        return award

    wrap_award_certificate(sims, lose_first_answer)
    report = await api.run(plan)
    assert report["run"]["outcome"] == "complete"
    assert lost["after"] >= 5 and lost["before"] >= 5  # both kinds of loss really happened

    expected = {a for a in expected_state(sims.damstra.sim)["awards"] if a[1] != "CERT-101"}
    state = sims.civica_state()
    assert state["duplicate_awards"] == 0, "an award applied before its answer was lost was sent again"
    assert sorted(state["awards"]) == sorted(expected), "an award that never happened was taken as done"
    assert state["award_calls"] == len(expected)

    refused = ledger_rows(
        plan.ledger_path,
        "SELECT r.state, d.error_class, d.status, d.payload FROM records r JOIN dead_letters d"
        " ON d.stream = r.stream AND d.source_id = r.source_id WHERE r.stream = 'certificates'",
    )
    assert len(refused) == report["streams"]["certificates"]["dead_lettered"] >= 1
    for state_, error_class, status, payload in refused:
        assert (state_, error_class, status) == ("dead", "target_rejected", 404)
        assert "CERT-999" in payload
    assert report["streams"]["certificates"]["pending"] == 0


@pytest.mark.parametrize("sims", [{"damstra": {"records": 30}, "civica": {"status_delay": 0.02}}], indirect=True)
async def test_resume_looks_up_an_award_left_in_flight_before_sending_it(sims: Sims, tmp_path: Path) -> None:
    # mutant resume-skips-lookup. A run killed between an award's request and its answer leaves the
    # record `in_flight` with the award already in Civica; the resumed run must find it, not resend it.
    plan = load_plan(guarantee_plan(tmp_path, sims))
    assert (await api.run(plan))["run"]["outcome"] == "complete"
    chosen = [sid for (sid,) in ledger_rows(
        plan.ledger_path,
        "SELECT source_id FROM records WHERE stream = 'certificates' AND state = 'written' ORDER BY source_id LIMIT 3",
    )]  # fmt: skip
    assert len(chosen) == 3
    db = sqlite3.connect(plan.ledger_path)
    with db:
        db.executemany(
            "UPDATE records SET state = 'in_flight', target_id = NULL WHERE stream = 'certificates' AND source_id = ?",
            [(sid,) for sid in chosen],
        )
        db.execute("UPDATE cursors SET cursor = NULL, done = 0 WHERE stream = 'certificates'")
    db.close()
    _, awards_before = civica_calls(sims)

    report = await api.run(plan, resume=True)
    assert report["run"]["outcome"] == "complete"
    _, awards_after = civica_calls(sims)
    assert awards_after == awards_before, "an award left in flight was sent again"
    assert sims.civica_state()["duplicate_awards"] == 0
    marks = ",".join("?" * len(chosen))
    states = ledger_rows(
        plan.ledger_path,
        f"SELECT state, target_id FROM records WHERE stream = 'certificates' AND source_id IN ({marks})",
        *chosen,
    )
    assert all(state == "written" and target for state, target in states), states


# ---------------------------------------------------------------- Civica status ids survive a stop


@pytest.mark.parametrize("sims", [{"damstra": {"records": 30}, "civica": {"status_delay": 5.0}}], indirect=True)
async def test_resume_polls_the_stored_status_id_instead_of_creating_again(sims: Sims, tmp_path: Path) -> None:
    # mutants civica-status-id-ignored and status-id-not-saved. Four users are created (202) and
    # their status ids are still pending when the run is stopped and its writers cancelled; the
    # resumed run must poll those ids, not submit the creates again.
    plan = load_plan(guarantee_plan(tmp_path, sims, user_writers=4, certificate_writers=None))
    stop = anyio.Event()
    run = asyncio.create_task(api.run(plan, stop=stop, grace=1.0))  # less than any status takes
    await stop_once(sims, lambda calls, _: calls.get("create", 0) >= 4, stop)
    assert (await run)["run"]["outcome"] == "stopped"
    left = ledger_rows(plan.ledger_path, "SELECT progress FROM records WHERE stream = 'users' AND state = 'in_flight'")
    assert len(left) == 4 and all(re.fullmatch(r'\{"step":"create","job_id":"\S+"\}', p or "") for (p,) in left), left

    sims.civica_state()  # Civica applies the four creates meanwhile
    sims.civica.call(lambda: setattr(sims.civica_sim, "status_delay", 0.02))
    report = await api.run(plan, resume=True)
    assert report["run"]["outcome"] == "complete"

    users = expected_state(sims.damstra.sim)["users"]
    calls, _ = civica_calls(sims)
    assert calls.get("create", 0) == len(users), "a user whose create was accepted was created again"
    assert calls.get("update", 0) == 0
    assert set(sims.civica_state()["users"]) == set(users)


# ---------------------------------------------------------------- one user name, two source records


async def test_the_same_user_name_far_apart_in_the_listing_is_carried_once(tmp_path: Path) -> None:
    # mutants claim-ignores-ledger, duplicate-owner-unnamed, dead-letter-row-missing and
    # dead-letter-payload-dropped. Users 3 and 38 share a user name, seven pages of five apart:
    # user 3 is written and forgotten by the engine long before user 38 is read, so only the
    # ledger can tell that the name is taken.
    names = [f"user.{n:02d}" for n in range(1, 41)]
    names[3 - 1] = names[38 - 1] = "twin.user"
    rows = tenant(names, first_names={3: "Kept", 38: "Intruder"})
    with running({"data": rows}, {"status_delay": 0}) as sims:
        plan = load_plan(
            guarantee_plan(tmp_path, sims, user_writers=2, certificate_writers=None, page_size=5, poll_initial=0)
        )
        report = await api.run(plan)
        state = sims.civica_state()
    assert report["run"]["outcome"] == "complete"
    records = dict(ledger_rows(plan.ledger_path, "SELECT source_id, state FROM records WHERE stream = 'users'"))
    assert len(records) == 40 and records["3"] == "written" and records["38"] == "dead"
    letters = ledger_rows(plan.ledger_path, "SELECT source_id, error_class, message, payload FROM dead_letters")
    assert len(letters) == 1, letters
    sid, error_class, message, payload = letters[0]
    assert (sid, error_class) == ("38", "duplicate_natural_key")
    assert "twin.user" in message and re.search(r"\b3\b", message), f"the dead letter must name record 3: {message}"
    assert payload and "Intruder" in payload
    assert len(state["users"]) == 39
    assert state["users"]["twin.user"][0]["forename"] == "Kept", "the second record overwrote the first"
