"""SIGKILL a real `migrator run` at three moments, resume, and find everything exactly once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sims, cli_env, write_plan
from tests.expected import assert_target_matches, expected_state

USERS = 300
WRITERS = 64  # streams.users.writers in the test plan


def civica(sims: Sims, read: Callable[[Any], Any]) -> Any:
    return sims.civica.call(read, sims.civica.sim)


MOMENTS: dict[str, Callable[[Sims], bool]] = {
    # a few source pages read, nothing much written yet
    "reading": lambda s: s.damstra.call(lambda d: d.stats.requests, s.damstra.sim) >= 3,
    # SetUser 202s accepted whose status ids are still pending
    "users_pending": lambda s: civica(s, lambda c: c.pending) >= 10,
    # certificates being awarded
    "awarding": lambda s: civica(s, lambda c: c.award_calls) >= 10,
}


def start_run(plan: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "migrator.cli", "run", str(plan), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )


@pytest.mark.parametrize(
    "sims",
    [{"damstra": {"records": USERS, "faults": "latency=15ms"}, "civica": {"status_delay": 0.3}}],
    indirect=True,
)
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_leaves_everything_exactly_once(sims: Sims, tmp_path: Path, moment: str) -> None:
    plan = write_plan(tmp_path, sims)
    proc = start_run(plan)
    deadline = time.monotonic() + 60
    while not MOMENTS[moment](sims):
        assert proc.poll() is None, f"the run ended before the '{moment}' moment: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"never reached the '{moment}' moment"
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=10)
    assert proc.returncode == -9

    resumed = start_run(plan, "--resume")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]

    expected = expected_state(sims.damstra.sim)
    state = sims.civica_state()
    assert_target_matches(state, expected)
    # the resumed run polled stored status ids or met 409s: creates re-sent stay within one writer pool
    assert state["set_user_calls"].get("create", 0) <= len(expected["users"]) + WRITERS

    # the ledger accounts for every source record, each settled once
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    states = dict(db.execute("SELECT stream || '/' || state, count(*) FROM records GROUP BY stream, state").fetchall())
    assert not any(k.endswith(("/pending", "/in_flight")) for k in states), states
    assert sum(n for k, n in states.items() if k.startswith("users/")) == USERS
    data = sims.damstra.sim.data
    completed = sum(
        1 for i in range(len(data)) for s in data.schedules(i) if s.get("status") == "completed"
    )
    assert sum(n for k, n in states.items() if k.startswith("certificates/")) == completed
    assert states.get("users/written", 0) == len(expected["users"])
    assert states.get("certificates/written", 0) == len(expected["awards"])
    done = dict(db.execute("SELECT stream, done FROM cursors").fetchall())
    assert done == {"groups": 1, "users": 1, "certificates": 1}


@pytest.mark.parametrize(
    "sims",
    [{"damstra": {"records": USERS, "faults": "latency=15ms"}, "civica": {"status_delay": 0.3}}],
    indirect=True,
)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_graceful_stop_finishes_in_flight_work_and_says_how_to_resume(sims: Sims, tmp_path: Path, sig) -> None:
    plan = write_plan(tmp_path, sims)
    proc = start_run(plan)
    deadline = time.monotonic() + 60
    while not MOMENTS["awarding"](sims):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"migrator run {plan} --resume" in err
    assert "stopping" in err
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    # every request that was in flight finished and its outcome was committed
    assert db.execute("SELECT count(*) FROM records WHERE state = 'in_flight'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM records WHERE state = 'pending'").fetchone()[0] > 0
    assert db.execute("SELECT outcome FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0] == "stopped"
    db.close()

    resumed = start_run(plan, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))
