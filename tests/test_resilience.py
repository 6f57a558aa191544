"""Rate limits, injected faults, bad plans and secrets: the run ends exact, polite and quiet about keys."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from migrator import api
from migrator.plan import load_plan
from migrator.verify import verify
from tests.conftest import CIVICA_KEY, DAMSTRA_KEY, Sims, cli_env, write_plan
from tests.expected import assert_target_matches, expected_state

R, BURST = 40, 5


def max_in_window(times: list[float], window: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("sims", [{"damstra": {"records": 60}, "civica": {"rate": R}}], indirect=True)
async def test_rate_limited_target_is_never_exceeded(sims: Sims, tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, sims, target_limits=f"rate = {R}\nburst = {BURST}\nconcurrency = 16"))
    report = await api.run(plan)
    assert report["totals"]["dead_lettered"] == 0
    times = sorted(sims.civica.call(lambda s: list(s.stats.request_times), sims.civica.sim))
    assert len(times) > 2 * R  # long enough to mean something
    assert max_in_window(times) <= R + BURST
    assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))


@pytest.mark.parametrize("sims", [{"damstra": {"records": 40}, "civica": {"rate": 15}}], indirect=True)
async def test_adaptive_rate_finds_an_unknown_limit_without_losing_anything(sims: Sims, tmp_path: Path) -> None:
    limits = "concurrency = 16\nadaptive_start = 60\nbackoff_base = 0.05"
    plan = load_plan(write_plan(tmp_path, sims, target_limits=limits))
    report = await api.run(plan)
    assert report["totals"]["dead_lettered"] == 0
    assert report["totals"]["rate_limited"] > 0  # it had to discover the limit
    assert_target_matches(sims.civica_state(), expected_state(sims.damstra.sim))


FAULTS = "500=0.05,drop=0.01,seed=11"


@pytest.mark.parametrize(
    "sims",
    [{"damstra": {"records": 150, "faults": FAULTS}, "civica": {"faults": FAULTS + ",after=0.5"}}],
    indirect=True,
)
async def test_faults_on_both_sides_lose_and_duplicate_nothing(sims: Sims, tmp_path: Path) -> None:
    limits = "concurrency = 16\nbackoff_base = 0.02\nbackoff_cap = 0.2\nmax_retries = 10"
    plan = load_plan(write_plan(tmp_path, sims, target_limits=limits, source_limits=limits))
    report = await api.run(plan)
    assert report["totals"]["dead_lettered"] == 0, report["totals"]
    assert report["totals"]["retried"] > 0  # the faults really happened
    state = sims.civica_state()
    assert_target_matches(state, expected_state(sims.damstra.sim))
    faults = sims.civica.call(lambda s: dict(s.stats.faults), sims.civica.sim)
    assert sum(faults.values()) > 0
    assert (await verify(plan))["ok"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator.cli", *args], capture_output=True, text=True, env=env or cli_env(), timeout=120
    )


BASE_PLAN = """
[source]
platform = "damstra"
base_url = "https://app.velpic.com/api/v2"
access_key = "${TEST_DAMSTRA_KEY}"
[target]
platform = "civica"
base_url = "https://api.civica-learning.com/eu"
scope = "x.learning-admin.com"
api_key = "${TEST_CIVICA_KEY}"
"""


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t + '\n[streams.users]\nwritres = 4\n', "streams.users.writres"),
        (lambda t: "ledgr = 'x.sqlite'\n" + t, "ledgr"),
        (lambda t: t.replace("${TEST_CIVICA_KEY}", "${CIVICA_KEY_NOT_SET}"), "CIVICA_KEY_NOT_SET"),
        (lambda t: t.replace("https://app.velpic.com", "http://app.velpic.com"), "source.base_url"),
        (lambda t: t.replace('platform = "civica"', 'platform = "moodle"'), "target.platform"),
        (lambda t: t.replace('scope = "x.learning-admin.com"\n', ""), "target.scope"),
        (lambda t: t + "\n[target.limits]\nrate = 'fast'\n", '"unlimited", or leave it out'),
        (lambda t: t + "\n[mapping]\ncertifications = 3\n", "mapping"),
    ],
)
def test_bad_plans_give_one_line_and_exit_2(tmp_path: Path, edit, needle: str) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(edit(BASE_PLAN))
    env = cli_env() | {"TEST_DAMSTRA_KEY": DAMSTRA_KEY, "TEST_CIVICA_KEY": CIVICA_KEY}
    env.pop("CIVICA_KEY_NOT_SET", None)
    done = run_cli("run", str(plan), "--quiet", env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert CIVICA_KEY not in done.stderr and DAMSTRA_KEY not in done.stderr


def test_missing_plan_file_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli("run", str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "cannot read plan" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "sims", [{"damstra": {"records": 80, "malformed": 0.05, "faults": "500=0.05,seed=3"}}], indirect=True
)
def test_secrets_appear_nowhere(sims: Sims, tmp_path: Path) -> None:
    # lesson 101 maps to a certification Civica does not have: those awards are dead-lettered with payloads
    plan = write_plan(tmp_path, sims, extra="", certifications=range(102, 119))
    plan.write_text(plan.read_text().replace('[mapping.certifications]', '[mapping.certifications]\n"101" = "CERT-999"'))
    report_path = tmp_path / "report.json"
    done = run_cli("run", str(plan), "--verbose", "--report", str(report_path))
    assert done.returncode == 1, done.stderr[-2000:]  # finished, with dead letters
    ledger = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    dead = db.execute("SELECT error_class, message, payload FROM dead_letters").fetchall()
    assert any(cls == "target_rejected" and payload for cls, _, payload in dead)
    db.close()
    # a wrong key: the error text must not echo either key
    wrong = run_cli("run", str(plan), "--resume", "--quiet", env=cli_env() | {"TEST_CIVICA_KEY": "not-the-key-123"})
    assert wrong.returncode == 3 and "refused the credentials" in wrong.stderr
    status = run_cli("status", str(ledger))
    haystacks = [done.stdout, done.stderr, wrong.stdout, wrong.stderr, status.stdout, report_path.read_text()]
    haystacks += [p.read_bytes().decode("latin-1") for p in tmp_path.glob("ledger.sqlite*")]
    haystacks += [repr(row) for row in dead]
    for secret in (DAMSTRA_KEY, CIVICA_KEY, "not-the-key-123"):
        for text in haystacks:
            assert secret not in text
    assert (ledger.stat().st_mode & 0o077) == 0  # owner-only ledger


@pytest.mark.parametrize(("platform", "stop"), [("damstra", signal.SIGINT), ("civica", signal.SIGTERM)])
def test_sim_command_serves_on_loopback_and_stops_on_a_signal(platform: str, stop: signal.Signals) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator.cli", "sim", platform, "--port", str(port), "--records", "50",
         "--faults", "latency=1ms", "--retry-after", "date"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        # as a shell starts a background job: SIGINT ignored, so only an explicit handler can stop it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        line = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
        assert "requests" in stats
        if platform == "civica":
            assert stats["award_calls"] == 0 and stats["set_user_calls"] == {}
        proc.send_signal(stop)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sim_command_rejects_a_bad_fault_spec() -> None:
    done = run_cli("sim", "civica", "--port", "1", "--faults", "explode=0.5")
    assert done.returncode == 2 and "explode" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("sims", [{"damstra": {"records": 50}}], indirect=True)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_cli_runs_on_either_event_loop(sims: Sims, tmp_path: Path, loop: str) -> None:
    # uvloop is the default where installed; MIGRATOR_LOOP=asyncio is the escape hatch
    plan = write_plan(tmp_path, sims)
    report_path = tmp_path / "report.json"
    env = cli_env() | ({"MIGRATOR_LOOP": "asyncio"} if loop == "asyncio" else {})
    done = run_cli("run", str(plan), "--quiet", "--report", str(report_path), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["run"]["event_loop"] == loop
    assert report["streams"]["users"]["written"] + report["streams"]["users"]["dead_lettered"] == 50
