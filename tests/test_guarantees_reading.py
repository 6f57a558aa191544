"""The reading side's guarantees: the committed cursor never passes a record that is not settled,
offset paging loses no one when more records vanish behind it than its overlap covers, and the
reader stays a few pages ahead of stuck writers instead of pulling the whole source into memory.

Damstra and Civica simulators over real loopback HTTP. Each test names the mutants of
tests/mutants/mutants.toml it exists to kill.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from migrator import api
from migrator.plan import load_plan
from migrator.simulate.base import delivered
from tests.conftest import Sims, start_sims
from tests.guarantee_support import SETTLED_STATES, civica_calls, guarantee_plan, ledger_rows, tenant


@contextmanager
def running(damstra: dict[str, Any] | None = None, civica: dict[str, Any] | None = None) -> Iterator[Sims]:
    d, c = start_sims(damstra, civica)
    with d, c:
        yield Sims(d, c)


def is_user_listing(request: Any) -> bool:
    return request.path.rstrip("/") == "/api/v2/user"


# ---------------------------------------------------------------- the cursor follows the writers


@pytest.mark.parametrize("sims", [{"damstra": {"records": 40}, "civica": {"status_delay": 0.05}}], indirect=True)
async def test_the_committed_cursor_never_passes_an_unsettled_record(sims: Sims, tmp_path: Path) -> None:
    # mutant cursor-committed-when-mapped. At every request Civica serves, the simulator reads the ledger
    # file as a freshly resumed run would: every user before the committed cursor must be settled,
    # or that resume would never read it again. Two slow writers keep the reader pages ahead.
    plan = load_plan(guarantee_plan(tmp_path, sims, page_size=5, user_writers=2, certificate_writers=None))
    seen: list[tuple[int, list[str]]] = []

    def check(request: Any, resp: Any) -> None:
        db = sqlite3.connect(plan.ledger_path, timeout=10)
        try:
            with db:  # one read transaction: the cursor and the states of the same commit
                db.execute("BEGIN")
                row = db.execute("SELECT cursor FROM cursors WHERE stream = 'users'").fetchone()
                settled = {sid for (sid,) in db.execute(
                    f"SELECT source_id FROM records WHERE stream = 'users' AND state IN {SETTLED_STATES}"
                )}  # fmt: skip
        finally:
            db.close()
        if row and row[0] is not None:
            cursor = int(row[0])  # Damstra's offset; user k of the listing has id 1000 + k
            seen.append((cursor, sorted({str(1000 + k) for k in range(cursor)} - settled)))

    sims.civica.call(lambda: setattr(sims.civica_sim, "on_served", check))
    report = await api.run(plan)
    assert report["run"]["outcome"] == "complete"
    assert seen and max(cursor for cursor, _ in seen) >= 20, "the cursor never moved while Civica was written"
    passed = [(cursor, unsettled) for cursor, unsettled in seen if unsettled]
    assert passed == [], f"the committed cursor passed unsettled users: {passed[:3]}"


# ---------------------------------------------------------------- offset paging under deletions


async def test_more_users_deleted_behind_the_cursor_than_the_overlap_lose_no_one(tmp_path: Path) -> None:
    # mutant offset-anchor-unchecked. Pages of 10 overlap by 5; once the second page is served, eight
    # users of the first page are deleted, so every later user moves eight places down the listing.
    # Asked for from offset 10 as planned, the third page would start three users too late.
    names = [f"user.{n:02d}" for n in range(1, 61)]
    doomed = list(range(1, 9))
    deleted: list[int] = []

    def delete_after_second_page(request: Any, resp: Any) -> None:
        second = is_user_listing(request) and request.query.get("startIndex") == "5"
        if second and resp.status == 200 and delivered(resp) and not deleted:
            for uid in doomed:
                sim.delete_user(uid)
                deleted.append(uid)

    with running({"data": tenant(names), "on_served": delete_after_second_page}) as sims:
        sim: Any = sims.damstra.sim
        plan = load_plan(guarantee_plan(tmp_path, sims, page_size=10, certificate_writers=None))
        report = await api.run(plan)
        carried = set(sims.civica_state()["users"])
    assert deleted == doomed, "the listing was not read the way this test expects (pages of 10, overlap 5)"
    assert report["run"]["outcome"] == "complete"
    written = {sid for (sid,) in ledger_rows(
        plan.ledger_path, "SELECT source_id FROM records WHERE stream = 'users' AND state = 'written'"
    )}  # fmt: skip
    missing = sorted({str(n) for n in range(1, 61)} - written, key=int)
    assert missing == [], f"users never read: {missing}"
    assert carried == set(names)  # the deleted ones too: they had been read before they went


# ---------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("sims", [{"damstra": {"records": 300}, "civica": {"status_delay": 30}}], indirect=True)
async def test_the_reader_stays_a_few_pages_ahead_of_stuck_writers(sims: Sims, tmp_path: Path) -> None:
    # mutants unbounded-record-queue and unbounded-page-stream. Both writers wait on a status that
    # takes 30 s; meanwhile the reader may fill the bounded queues between it and them, and no more.
    # Unbounded, it would read all 300 users (59 pages) in about the half second we wait.
    plan = load_plan(guarantee_plan(
        tmp_path, sims, source_limits='rate = "unlimited"\nconcurrency = 8', page_size=10, user_writers=2,
        certificate_writers=None,
    ))  # fmt: skip
    listing: list[float] = []
    sims.damstra.call(lambda: setattr(
        sims.damstra.sim, "on_served", lambda request, resp: listing.append(time.monotonic()) if is_user_listing(request) else None
    ))  # fmt: skip
    stop = anyio.Event()
    run = asyncio.create_task(api.run(plan, stop=stop, grace=0.1))
    deadline = time.monotonic() + 30
    while civica_calls(sims)[0].get("create", 0) < 2:
        assert time.monotonic() < deadline and not run.done(), "the writers never started"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    pages = sims.damstra.call(lambda: len(listing))
    stop.set()
    report = await run
    assert report["run"]["outcome"] == "stopped"
    assert pages <= 8, f"{pages} pages read while two writers were stuck"
    held = ledger_rows(plan.ledger_path, "SELECT count(*) FROM records WHERE stream = 'users'")[0][0]
    assert held <= 50, f"{held} of 300 users read while two writers were stuck"
