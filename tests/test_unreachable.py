"""An unreachable host stops the run with one line (exit 3), soon when it never answered, and
never dead-letters a record for it: the records stay pending and `--resume` continues."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from migrator import api
from migrator.api import MigrationError
from migrator.engine import NoProgress
from migrator.http import HostClient, HostLimits, HostUnreachable
from migrator.plan import load_plan
from migrator.simulate.server import RunningSim
from tests.conftest import Sims, cli_env, start_sims, write_plan
from tests.expected import assert_target_matches, expected_state


def closed_port() -> int:
    """A loopback port nothing listens on: bound to learn a free number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "migrator.cli", *args], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    return done, time.monotonic() - started


def dead_letters(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as db:
        return int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


def assert_one_line_naming(stderr: str, where: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("migrator: error: cannot reach "), line
    assert where in line and "connection refused" in line and "Traceback" not in stderr
    return line


@pytest.mark.parametrize("side", ["target", "source"])
def test_a_wrong_port_stops_the_run_in_seconds_with_one_line(sims: Sims, tmp_path: Path, side: str) -> None:
    port = closed_port()
    plan = write_plan(tmp_path, sims)
    right = sims.civica.url if side == "target" else sims.damstra.url
    plan.write_text(plan.read_text().replace(f'"{right}', f'"http://127.0.0.1:{port}'))

    done, elapsed = cli("run", str(plan), "--quiet")

    assert done.returncode == 3, done.stderr
    line = assert_one_line_naming(done.stderr, f"127.0.0.1:{port}")
    assert f"cannot reach the {side} at http://127.0.0.1:{port}" in line
    assert "3 attempts over" in line and f"`{side}.base_url`" in line
    assert elapsed < 8, f"took {elapsed:.1f}s"  # a few quick attempts, not the 13-20 s retry budget
    assert dead_letters(tmp_path / "ledger.sqlite") == 0
    if side == "source":
        assert sims.civica_state()["users"] == {}


def test_verify_against_a_wrong_port_is_one_line(sims: Sims, tmp_path: Path) -> None:
    port = closed_port()
    plan = write_plan(tmp_path, sims)
    plan.write_text(plan.read_text().replace(f'"{sims.civica.url}', f'"http://127.0.0.1:{port}'))

    done, elapsed = cli("verify", str(plan))

    assert done.returncode == 3, done.stderr
    line = assert_one_line_naming(done.stderr, f"127.0.0.1:{port}")
    assert "3 attempts over" in line and "check the host and port" in line
    assert elapsed < 8


# ---------------------------------------------------------------- HostClient


async def _pong(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _answer_once() -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/ping", _pong)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_host_that_answered_gets_the_full_retry_budget_before_it_is_unreachable() -> None:
    runner, url = await _answer_once()
    limits = HostLimits(rate=1000, max_retries=6, backoff_base=0.01, backoff_cap=0.05)
    async with HostClient(url, limits=limits, name="lms") as http:
        await http.request("GET", "/ping")
        await runner.cleanup()  # the host goes away after it answered
        with pytest.raises(HostUnreachable) as info:
            await http.request("GET", "/ping", params={"page": 2})
    assert http.stats.requests == 1 + 7 and http.stats.errors == 7  # the answer, then 1 + max_retries attempts
    err = info.value
    assert err.host == "lms" and err.base_url == url and err.reached and err.status is None
    assert str(err).startswith(f"cannot reach {url}: connection refused, 7 attempts over ")
    assert "(GET /ping?page=2)" in str(err) and "it answered earlier in this run" in str(err)


async def test_a_host_that_never_answered_is_given_up_after_three_quick_attempts() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    limits = HostLimits(rate=1000)  # the default budget: 8 retries, backoff up to 30 s
    started = time.monotonic()
    async with HostClient(url, limits=limits, name="lms") as http:
        with pytest.raises(HostUnreachable) as info:
            await http.request("POST", "/SetUser", json={}, idempotent=False)
    assert time.monotonic() - started < 2.0
    assert http.stats.requests == http.stats.errors == 3
    assert not info.value.reached and "check the host and port in its base_url" in str(info.value)


# ---------------------------------------------------------------- a target that goes away mid-run


class StopTargetAfter(NoProgress):
    """Stops the target simulator (from another thread) once `users` records have settled."""

    def __init__(self, target: RunningSim, users: int) -> None:
        self.target, self.left = target, users
        self.stopper: threading.Thread | None = None

    def advance(self, stream: str, n: int = 1) -> None:
        if stream != "users" or self.stopper is not None:
            return
        self.left -= n
        if self.left <= 0:
            self.stopper = threading.Thread(target=self.target.__exit__)
            self.stopper.start()


async def test_a_target_that_goes_away_mid_run_stops_it_and_resume_finishes(tmp_path: Path) -> None:
    damstra, civica = start_sims()
    with damstra:
        civica.__enter__()
        port = civica.port
        limits = "concurrency = 16\nmax_retries = 3\nbackoff_base = 0.05\nbackoff_cap = 0.2"
        plan = load_plan(write_plan(tmp_path, Sims(damstra, civica), target_limits=limits))
        stopping = StopTargetAfter(civica, users=30)
        with pytest.raises(MigrationError) as info:
            await api.run(plan, progress=stopping)
        assert stopping.stopper is not None
        stopping.stopper.join(10)

        message = str(info.value)
        assert f"cannot reach the target at http://127.0.0.1:{port}: " in message
        assert "it answered earlier in this run" in message and "--resume" in message and "\n" not in message
        assert dead_letters(plan.ledger_path) == 0  # the host was down: no record is to blame
        with sqlite3.connect(plan.ledger_path) as db:
            unsettled = db.execute("SELECT count(*) FROM records WHERE state NOT IN ('written', 'skipped')")
            assert unsettled.fetchone()[0] > 0

        # the same portal comes back on the same address: the resumed run finishes the job
        back = RunningSim(civica.sim, port=port)
        with back:
            report = await api.run(plan, resume=True)
            assert report["run"]["outcome"] == "complete", report["totals"]
            assert report["totals"]["dead_lettered"] == 0
            assert_target_matches(Sims(damstra, back).civica_state(), expected_state(damstra.sim))
