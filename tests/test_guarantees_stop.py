"""A graceful stop starts no new write, leaves the rest pending with the report accounting for it,
and the resumed run carries everything exactly once.

Damstra and Civica simulators over real loopback HTTP; the stop is the one `migrator run` sets on
its first Ctrl-C / SIGTERM, set here at a known moment. Names the mutants of
tests/mutants/mutants.toml it exists to kill.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio

from migrator import api
from migrator.plan import load_plan
from tests.conftest import Sims, start_sims
from tests.guarantee_support import civica_calls, guarantee_plan, ledger_rows, stop_once, tenant

USERS = 40
WRITERS = 2


async def test_a_graceful_stop_starts_no_new_write_and_the_report_counts_what_is_pending(tmp_path: Path) -> None:
    # mutants stop-writers-keep-writing, stop-ignored and report-read-from-settled. Two writers, each
    # SetUser pending 0.3 s, so the queue in front of them is full when the stop comes; users are in
    # no group, so nothing but the stop itself can hold a queued user back.
    names = [f"user.{n:02d}" for n in range(1, USERS + 1)]
    d, c = start_sims({"data": tenant(names)}, {"status_delay": 0.3})
    with d, c:
        sims = Sims(d, c)
        plan = load_plan(guarantee_plan(tmp_path, sims, user_writers=WRITERS, certificate_writers=None))
        stop = anyio.Event()
        run = asyncio.create_task(api.run(plan, stop=stop, grace=3.0))
        at_stop = await stop_once(sims, lambda calls, _: calls.get("create", 0) >= 4, stop)
        report = await run
        after, _ = civica_calls(sims)

        # only the writes already under way when the stop came: at most one per writer
        started_later = after.get("create", 0) - at_stop.get("create", 0)
        assert started_later <= WRITERS, f"{started_later} users were created after the stop"
        assert report["run"]["outcome"] == "stopped"
        users = report["streams"]["users"]
        assert users["pending"] > 0
        assert users["read"] == users["written"] + users["skipped"] + users["dead_lettered"] + users["pending"]
        rows = dict(ledger_rows(plan.ledger_path, "SELECT state, count(*) FROM records WHERE stream = 'users' GROUP BY state"))
        assert users["read"] == sum(rows.values())
        assert rows.get("in_flight", 0) == 0  # every write under way finished within the grace period

        sims.civica.call(lambda: setattr(sims.civica_sim, "status_delay", 0.02))
        resumed = await api.run(plan, resume=True)
        assert resumed["run"]["outcome"] == "complete"
        calls, _ = civica_calls(sims)
        assert calls.get("create", 0) == USERS and calls.get("update", 0) == 0
        assert set(sims.civica_state()["users"]) == set(names)
