"""Crash matrix driver: SIGKILL a real `migrator run` at random moments, resume each time, then
check the target equals the source exactly. Used by the CI test (3 kills) and benchmarks/chaos.py."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from migrator import aio
from migrator.demo import demo_plan
from migrator.plan import load_plan
from migrator.platforms.civica.simulator import CivicaSimulator
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.server import RunningSim
from migrator.verify import verify

DAMSTRA_KEY, CIVICA_KEY = "chaos-damstra-key", "chaos-civica-key"


def _start(plan: Path, resume: bool) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DEMO_DAMSTRA_ACCESS_KEY=DAMSTRA_KEY, DEMO_CIVICA_API_KEY=CIVICA_KEY)
    args = [sys.executable, "-m", "migrator.cli", "run", str(plan), "--quiet"] + (["--resume"] if resume else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_chaos(
    *, records: int, kills: int, seed: int, workdir: Path, min_gap: float = 0.3, max_gap: float = 3.0,
    status_delay: float = 0.05, timeout: float = 1800.0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo-ledger.sqlite*"):
        stale.unlink()
    damstra = DamstraSimulator(records=records, seed=seed, access_key=DAMSTRA_KEY)
    civica = CivicaSimulator(status_delay=status_delay, api_key=CIVICA_KEY)
    started = time.monotonic()
    killed, deadline = 0, started + timeout
    with RunningSim(damstra) as source, RunningSim(civica) as target:
        plan_file = workdir / "plan.toml"
        plan_file.write_text(demo_plan(source.url, target.url))
        while killed < kills:
            proc = _start(plan_file, resume=killed > 0 or (workdir / "demo-ledger.sqlite").exists())
            gap = rng.uniform(min_gap, max_gap)
            try:
                proc.wait(timeout=gap)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed += 1
                continue
            if proc.returncode != 0:
                raise RuntimeError(f"run failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            break  # finished before the next kill came
        final = _start(plan_file, resume=True)
        _, err = final.communicate(timeout=max(10.0, deadline - time.monotonic()))
        if final.returncode != 0:
            raise RuntimeError(f"final resume failed: {err.decode()[-2000:]}")
        os.environ.setdefault("DEMO_DAMSTRA_ACCESS_KEY", DAMSTRA_KEY)
        os.environ.setdefault("DEMO_CIVICA_API_KEY", CIVICA_KEY)
        result = aio.run(verify, load_plan(plan_file))
        duplicate_awards = target.call(lambda sim: sim.duplicate_awards(), civica)
        creates = target.call(lambda sim: dict(sim.set_user_calls), civica)
        award_calls = target.call(lambda sim: sim.award_calls, civica)
    db = sqlite3.connect(workdir / "demo-ledger.sqlite")
    states = {f"{s}/{st}": n for s, st, n in db.execute("SELECT stream, state, count(*) FROM records GROUP BY 1, 2")}
    db.close()
    streams = result["streams"]
    lost = sum(s.get("missing", 0) for s in streams.values())
    duplicated = sum(s.get("extra", 0) for s in streams.values()) + duplicate_awards
    unsettled = sum(n for k, n in states.items() if k.endswith(("/pending", "/in_flight")))
    return {
        "records": records,
        "kills": killed,
        "lost": lost,
        "duplicated": duplicated,
        "unsettled_in_ledger": unsettled,
        "ledger_users": sum(n for k, n in states.items() if k.startswith("users/")),
        "verify_ok": result["ok"],
        "users_written": states.get("users/written", 0),
        "certificates_written": states.get("certificates/written", 0),
        "set_user_calls": creates,
        "award_calls": award_calls,
        "seconds": round(time.monotonic() - started, 1),
    }
