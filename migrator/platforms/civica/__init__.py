"""Civica Learning: users (with groups and active state) and certificate awards, written as a target."""

from __future__ import annotations

from typing import Any

from migrator.platforms.civica.config import CivicaTarget
from migrator.platforms.registry import DemoSide, Platform, SimOption, SimulatorInfo, TargetSide


def _open_target(cfg: CivicaTarget, secrets: list[str]) -> TargetSide:
    from migrator.platforms.civica.target import Civica

    return Civica(cfg, secrets)


def _simulator(**options: Any) -> Any:
    from migrator.platforms.civica.simulator import CivicaSimulator

    return CivicaSimulator(**options)


def _demo_simulator(records: int, key: str, seed: int = 7, status_delay: float = 0.2) -> Any:
    return _simulator(status_delay=status_delay, api_key=key, seed=seed)


def _audit(sim: Any) -> dict[str, Any]:
    sim.settle(float("inf"))
    calls = {"users": sum(sim.set_user_calls.values()), "certificates": sim.award_calls}
    return {"written_twice": sim.duplicate_awards(), "calls": calls, "set_user_calls": dict(sim.set_user_calls)}


def _demo_plan(side: str, url: str, env: str) -> str:
    return f"""[{side}]
platform = "civica"
base_url = "{url}"
scope = "demo.learning-admin.com"
api_key = "${{{env}}}"
poll_initial = 0.1                     # first status poll after a SetUser 202

[{side}.limits]
rate = 400                             # requests/s the portal allows us
burst = 40
concurrency = 32
"""


def _banner(sim: Any, url: str) -> list[str]:
    return [
        f"accepts: scope {sim.scope!r} with api key {sim.api_key!r} (HTTP Basic: scope as user name, key as password)",
        f'plan [target]: platform = "civica", base_url = "{url}", scope = "{sim.scope}",'
        f' api_key = "${{CIVICA_API_KEY}}" with CIVICA_API_KEY={sim.api_key}',
    ]


SIM_OPTIONS = (
    SimOption("--status-delay", "status_delay", "civica: seconds a SetUser stays pending", default=0.5),
    SimOption("--status-fail", "status_fail", "civica: share of SetUsers that end failed (3)", default=0.0),
    SimOption("--status-stuck", "status_stuck", "civica: share of SetUsers that stay pending for a long while,"
              " then fail", default=0.0),
    SimOption("--usernames-ignore-case", "usernames_case_sensitive", "civica: `Ann` and `ann` are one user"
              " (Civica's doc does not say; the default keeps them apart)", type=None, flag_means_false=True),
    SimOption("--scope", "scope", "civica: the portal domain it accepts as Basic-auth user name"
              " (default: demo.learning-admin.com)", type=str),
)

SIM_CREDENTIALS = """\
  civica   HTTP Basic, user name = scope `demo.learning-admin.com` (--scope), password = `civica-demo-key` (--key)
           plan: base_url = "http://127.0.0.1:PORT", scope = "demo.learning-admin.com", api_key = "${CIVICA_API_KEY}"
  e.g.     migrator sim civica --port 8081 --scope example.learning-admin.com --key "$CIVICA_API_KEY"
"""

SIM_DATA = """\
  civica (users the portal holds before the migration; without --data the portal starts empty):
    {"kind": "user", "profile": {"username": "bob.tan", "forename": "Bob", "surname": "Tan",
     "mail": "bob@example.org", "employee_number": "E9", "timezone": "UTC"},
     "groups": ["Crew"], "active": true}
    profile.username is required; lines of any other kind are ignored. The portal always offers
    certifications CERT-101 ... CERT-140 (the demo plan maps lesson N to CERT-N).
"""

PLATFORM = Platform(
    name="civica",
    title="Civica Learning",
    config=CivicaTarget,
    streams={"groups": "Group", "users": "User", "certificates": "Certificate"},
    open_target=_open_target,
    simulator=_simulator,
    sim=SimulatorInfo("api_key", SIM_OPTIONS, banner=_banner, credentials_help=SIM_CREDENTIALS, data_help=SIM_DATA),
    demo={"target": DemoSide(_demo_simulator, _demo_plan, "civica-demo-key", audit=_audit)},
)
