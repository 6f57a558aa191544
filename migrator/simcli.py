"""`migrator sim PLATFORM --port P`: one simulator in the foreground, on 127.0.0.1."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import anyio

DAMSTRA_KEY, CIVICA_SCOPE, CIVICA_KEY = "damstra-demo-key", "demo.learning-admin.com", "civica-demo-key"

# `migrator sim --help` epilog; README.md's "Simulators" section says the same.
SIM_EPILOG = f"""\
credentials (test credentials of a local simulator: printed at start-up):
  damstra  header `AccessKey: {DAMSTRA_KEY}` (--key)
           plan: base_url = "http://127.0.0.1:PORT/api/v2", access_key = "${{DAMSTRA_ACCESS_KEY}}"
  civica   HTTP Basic, user name = scope `{CIVICA_SCOPE}` (--scope), password = `{CIVICA_KEY}` (--key)
           plan: base_url = "http://127.0.0.1:PORT", scope = "{CIVICA_SCOPE}", api_key = "${{CIVICA_API_KEY}}"
  e.g.     migrator sim civica --port 8081 --scope example.learning-admin.com --key "$CIVICA_API_KEY"

--data FILE.jsonl: one JSON object per line (blank lines skipped); "kind" says what it is
  damstra (replaces the generated records; --records and --seed are then ignored):
    {{"kind": "group", "id": 1, "name": "Crew", "description": "Night shift"}}
    {{"kind": "user", "id": 7, "userName": "ann.lee", "firstName": "Ann", "lastName": "Lee",
     "emailAddress": "ann@example.org", "employeeNumber": "E7", "clientStatusId": 56,
     "groups": [{{"id": 1}}], "timeZone": "Australia/Perth"}}
    {{"kind": "lesson", "lessonId": 101, "lessonVersionId": 5001, "name": "Fire safety", "status": "active"}}
    {{"kind": "schedule", "id": 55, "userId": 7, "lessonId": 101, "lessonName": "Fire safety",
     "status": "completed", "lessonCompletedDate": "2024-03-01T10:00:00.000Z"}}
    Any other field of the Damstra API may be added; each record is served as written, without "kind".
    Users and groups are listed in id order. clientStatusId 56 is Active, 57 Not Current (without
    it, "active": true/false decides). Completions are schedules with "status": "completed"; they
    migrate as certificates when the plan maps their lessonId to a certification.
  civica (users the portal holds before the migration; without --data the portal starts empty):
    {{"kind": "user", "profile": {{"username": "bob.tan", "forename": "Bob", "surname": "Tan",
     "mail": "bob@example.org", "employee_number": "E9", "timezone": "UTC"}},
     "groups": ["Crew"], "active": true}}
    profile.username is required; lines of any other kind are ignored. The portal always offers
    certifications CERT-101 ... CERT-140 (the demo plan maps lesson N to CERT-N).

simulator routes (outside the API: no credentials, no rate limit, no faults):
  GET  /_sim/stats       JSON counters: requests, by_status (answers per HTTP status), faults; civica adds
                         users, active_users, awards, duplicate_awards, pending, failed_ops,
                         stuck_ops, set_user_calls (per action) and award_calls
  POST /_sim/rotate_key  damstra: body {{"access_key": "NEW"}}; the old key is refused (401) from now on
"""


def build_simulator(args: argparse.Namespace) -> Any:
    from migrator.simulate.faults import FaultSpec

    faults = FaultSpec.parse(args.faults) if args.faults else None
    common = {"rate": args.rate, "burst": args.burst, "faults": faults, "data": args.data, "seed": args.seed,
              "retry_after": args.retry_after}
    if args.platform == "damstra":
        from migrator.platforms.damstra.simulator import DamstraSimulator

        return DamstraSimulator(records=args.records, access_key=args.key or DAMSTRA_KEY, **common)
    from migrator.platforms.civica.simulator import CivicaSimulator

    civica = {"status_delay": args.status_delay, "status_fail": args.status_fail, "status_stuck": args.status_stuck,
              "usernames_case_sensitive": not args.usernames_ignore_case}
    return CivicaSimulator(scope=args.scope or CIVICA_SCOPE, api_key=args.key or CIVICA_KEY, **civica, **common)


def accepted_credentials(platform: str, sim: Any, url: str) -> list[str]:
    """What a plan needs to talk to this simulator: its base_url and the credentials it accepts."""
    if platform == "damstra":
        return [
            f"accepts: access key {sim.access_key!r} (AccessKey header)",
            f'plan [source]: platform = "damstra", base_url = "{url}/api/v2", access_key = "${{DAMSTRA_ACCESS_KEY}}"'
            f" with DAMSTRA_ACCESS_KEY={sim.access_key}",
        ]
    return [
        f"accepts: scope {sim.scope!r} with api key {sim.api_key!r} (HTTP Basic: scope as user name, key as password)",
        f'plan [target]: platform = "civica", base_url = "{url}", scope = "{sim.scope}",'
        f' api_key = "${{CIVICA_API_KEY}}" with CIVICA_API_KEY={sim.api_key}',
    ]


def _fail(message: str) -> int:
    print(f"migrator: error: {message}", file=sys.stderr)
    return 2


def serve_simulator(args: argparse.Namespace) -> int:
    from migrator.simulate.server import serve

    if args.scope and args.platform != "civica":
        return _fail("--scope is a civica setting (the portal domain); damstra takes only --key")
    try:
        sim = build_simulator(args)
    except OSError as exc:
        return _fail(f"--data {args.data}: {exc.strerror}")
    except ValueError as exc:
        return _fail(str(exc))

    def ready(url: str) -> None:
        print(f"{args.platform} simulator listening on {url} (Ctrl-C to stop)", flush=True)
        for line in accepted_credentials(args.platform, sim, url):
            print(f"  {line}", flush=True)

    async def serve_until_signalled() -> None:
        # Explicit handlers: a process started in the background by a shell ignores SIGINT, and
        # Python then never turns it into KeyboardInterrupt; SIGTERM is what supervisors send.
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(sim, port=args.port, on_ready=ready))
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

    try:
        try:
            anyio.run(serve_until_signalled)
        except BaseExceptionGroup as group:
            raise _sole(group) from None
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or not ours to bind
        return _fail(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}; choose another --port")
    return 0


def _sole(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]  # type: ignore[assignment]
    return group
