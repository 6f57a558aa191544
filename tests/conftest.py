"""Shared fixtures: simulators on loopback threads and plans pointing at them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.platforms.civica.simulator import CivicaSimulator
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.server import RunningSim

DAMSTRA_KEY = "dk-test-7c1f4e0b9a2d"
CIVICA_KEY = "ck-test-b83e51d0a6f4"


class Sims:
    def __init__(self, damstra: RunningSim, civica: RunningSim):
        self.damstra, self.civica = damstra, civica

    @property
    def civica_sim(self) -> CivicaSimulator:
        return self.civica.sim  # type: ignore[return-value]

    def civica_state(self) -> dict[str, Any]:
        """A settled snapshot of what Civica holds, read on the simulator's own thread."""

        def snap(sim: CivicaSimulator) -> dict[str, Any]:
            sim.settle(float("inf"))
            return {
                "users": {u: (dict(rec.profile), set(rec.groups), rec.active) for u, rec in sim.users.items()},
                "awards": [(a.username, a.ref, a.awarded_date) for a in sim.awards],
                "duplicate_awards": sim.duplicate_awards(),
                "set_user_calls": dict(sim.set_user_calls),
                "award_calls": sim.award_calls,
            }

        return self.civica.call(snap, self.civica.sim)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DAMSTRA_KEY", DAMSTRA_KEY)
    monkeypatch.setenv("TEST_CIVICA_KEY", CIVICA_KEY)


def start_sims(damstra: dict[str, Any] | None = None, civica: dict[str, Any] | None = None):
    d = DamstraSimulator(access_key=DAMSTRA_KEY, **{"records": 200, "seed": 3, **(damstra or {})})
    c = CivicaSimulator(api_key=CIVICA_KEY, **{"status_delay": 0.05, **(civica or {})})
    return RunningSim(d), RunningSim(c)


@pytest.fixture
def sims(request: pytest.FixtureRequest) -> Iterator[Sims]:
    params = getattr(request, "param", {}) or {}
    d, c = start_sims(params.get("damstra"), params.get("civica"))
    with d, c:
        yield Sims(d, c)


def write_plan(
    folder: Path,
    sims: Sims,
    *,
    target_limits: str = "concurrency = 16",
    source_limits: str = "concurrency = 8",
    extra: str = "",
    certifications: range = range(101, 119),
) -> Path:
    table = "\n".join(f'"{n}" = "CERT-{n}"' for n in certifications)
    text = f"""
ledger = "ledger.sqlite"
{extra}
[source]
platform = "damstra"
base_url = "{sims.damstra.url}/api/v2"
access_key = "${{TEST_DAMSTRA_KEY}}"
[source.limits]
{source_limits}
[target]
platform = "civica"
base_url = "{sims.civica.url}"
scope = "demo.learning-admin.com"
api_key = "${{TEST_CIVICA_KEY}}"
poll_initial = 0.05
poll_max = 0.5
[target.limits]
{target_limits}
[streams.users]
writers = 64
[streams.certificates]
writers = 16
[mapping.certifications]
{table}
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.toml"
    path.write_text(text)
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
