"""Crash matrix driver: SIGKILL a real `migrator run` at random moments, resume each time, then
check the target equals the source exactly. Used by the CI test (3 kills) and benchmarks/chaos.py.

Any demo pair can be driven (`source`, `target`); the target simulator's own audit says whether
anything was written twice."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from migrator import aio
from migrator.demo import DEFAULT_PAIR, credential_env, demo_plan
from migrator.ledger import IN_FLIGHT, PENDING, Ledger
from migrator.plan import load_plan
from migrator.platforms.registry import platform
from migrator.simulate.server import RunningSim
from migrator.verify import verify


def _start(plan: Path, resume: bool, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "migrator.cli", "run", str(plan), "--quiet"] + (["--resume"] if resume else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_chaos(
    *, records: int, kills: int, seed: int, workdir: Path, min_gap: float = 0.3, max_gap: float = 3.0,
    timeout: float = 1800.0, source: str = DEFAULT_PAIR[0], target: str = DEFAULT_PAIR[1],
) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo-ledger.sqlite*"):
        stale.unlink()
    src, tgt = platform(source).demo["source"], platform(target).demo["target"]
    keys = {credential_env(source): f"chaos-{source}-key", credential_env(target): f"chaos-{target}-key"}
    env = dict(os.environ, **keys)
    source_sim = src.simulator(records, keys[credential_env(source)], seed=seed, malformed=0.0)
    target_sim = tgt.simulator(records, keys[credential_env(target)], seed=seed, status_delay=0.05)
    started = time.monotonic()
    killed, deadline = 0, started + timeout
    with RunningSim(source_sim) as source_at, RunningSim(target_sim) as target_at:
        plan_file = workdir / "plan.toml"
        plan_file.write_text(demo_plan(source, target, source_at.url, target_at.url))
        while killed < kills:
            proc = _start(plan_file, killed > 0 or (workdir / "demo-ledger.sqlite").exists(), env)
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
        final = _start(plan_file, True, env)
        _, err = final.communicate(timeout=max(10.0, deadline - time.monotonic()))
        if final.returncode != 0:
            raise RuntimeError(f"final resume failed: {err.decode()[-2000:]}")
        os.environ.update(keys)
        result = aio.run(verify, load_plan(plan_file))
        audit = target_at.call(tgt.audit, target_sim) if tgt.audit else {"written_twice": 0, "calls": {}}
    ledger = Ledger(workdir / "demo-ledger.sqlite")
    counts = ledger.counts()
    ledger.close()
    streams = result["streams"]
    written = {stream: states.get("written", 0) for stream, states in counts.items()}
    return {
        "pair": f"{source} -> {target}",
        "records": records,
        "kills": killed,
        "lost": sum(s.get("missing", 0) for s in streams.values()),
        "duplicated": sum(s.get("extra", 0) for s in streams.values()) + audit["written_twice"],
        "unsettled_in_ledger": sum(n for states in counts.values() for st, n in states.items() if st in (PENDING, IN_FLIGHT)),
        "ledger_users": sum(counts.get("users", {}).values()),
        "verify_ok": result["ok"],
        "written": written,
        "write_calls": audit["calls"],  # write requests the target received, per stream
        **{k: v for k, v in audit.items() if k not in ("written_twice", "calls")},
        "seconds": round(time.monotonic() - started, 1),
    }
