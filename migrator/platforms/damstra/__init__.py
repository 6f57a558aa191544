"""Damstra Learning (formerly Velpic): groups, users and completed lesson schedules, read as a source."""

from __future__ import annotations

from typing import Any

from migrator.platforms.damstra.config import DamstraSource
from migrator.platforms.registry import DemoSide, Platform, SimulatorInfo, SourceSide


def _open_source(cfg: DamstraSource, secrets: list[str]) -> SourceSide:
    from migrator.platforms.damstra.source import STREAMS, open_client

    client = open_client(cfg, secrets)
    return SourceSide(client, {name: cls(client, cfg) for name, cls in STREAMS.items()})


def _simulator(**options: Any) -> Any:
    from migrator.platforms.damstra.simulator import DamstraSimulator

    return DamstraSimulator(**options)


def _demo_simulator(records: int, key: str, seed: int = 7, malformed: float = 0.002) -> Any:
    # about one user in 500 lacks a first name: the demo shows how a bad record is dead-lettered
    return _simulator(records=records, seed=seed, malformed=malformed, access_key=key)


def _demo_plan(side: str, url: str, env: str) -> str:
    return f"""[{side}]
platform = "damstra"
base_url = "{url}/api/v2"
access_key = "${{{env}}}"   # secrets come from the environment, never the file

[{side}.limits]
concurrency = 8                        # no rate given: adapt to what the server allows
"""


def _banner(sim: Any, url: str) -> list[str]:
    return [
        f"accepts: access key {sim.access_key!r} (AccessKey header)",
        f'plan [source]: platform = "damstra", base_url = "{url}/api/v2", access_key = "${{DAMSTRA_ACCESS_KEY}}"'
        f" with DAMSTRA_ACCESS_KEY={sim.access_key}",
    ]


SIM_CREDENTIALS = """\
  damstra  header `AccessKey: damstra-demo-key` (--key)
           plan: base_url = "http://127.0.0.1:PORT/api/v2", access_key = "${DAMSTRA_ACCESS_KEY}"
"""

SIM_DATA = """\
  damstra (replaces the generated records; --records and --seed are then ignored):
    {"kind": "group", "id": 1, "name": "Crew", "description": "Night shift"}
    {"kind": "user", "id": 7, "userName": "ann.lee", "firstName": "Ann", "lastName": "Lee",
     "emailAddress": "ann@example.org", "employeeNumber": "E7", "clientStatusId": 56,
     "groups": [{"id": 1}], "timeZone": "Australia/Perth"}
    {"kind": "lesson", "lessonId": 101, "lessonVersionId": 5001, "name": "Fire safety", "status": "active"}
    {"kind": "schedule", "id": 55, "userId": 7, "lessonId": 101, "lessonName": "Fire safety",
     "status": "completed", "lessonCompletedDate": "2024-03-01T10:00:00.000Z"}
    Any other field of the Damstra API may be added; each record is served as written, without "kind".
    Users and groups are listed in id order. clientStatusId 56 is Active, 57 Not Current (without
    it, "active": true/false decides). Completions are schedules with "status": "completed"; they
    migrate as certificates when the plan maps their lessonId to a certification.
"""

PLATFORM = Platform(
    name="damstra",
    title="Damstra Learning (formerly Velpic)",
    config=DamstraSource,
    streams={"groups": "Group", "users": "User", "certificates": "Certificate"},
    open_source=_open_source,
    simulator=_simulator,
    sim=SimulatorInfo("access_key", banner=_banner, credentials_help=SIM_CREDENTIALS, data_help=SIM_DATA),
    demo={
        "source": DemoSide(
            _demo_simulator, _demo_plan, "damstra-demo-key",
            expected_dead="the Damstra simulator makes about one user in 500 without a first name, which the"
            " target refuses, and that user's completions follow it as missing_dependency",
        )
    },
)
