"""`migrator demo`: a real migration between two simulators on loopback, then verify."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson

from migrator import aio

PLAN = """\
# A demo plan: Damstra Learning (source) -> Civica Learning (target), both simulated on loopback.
ledger = "demo-ledger.sqlite"          # every record's fate; resume with `migrator run PLAN --resume`

[source]
platform = "damstra"
base_url = "{damstra}/api/v2"
access_key = "${{DEMO_DAMSTRA_ACCESS_KEY}}"   # secrets come from the environment, never the file

[source.limits]
concurrency = 8                        # no rate given: adapt to what the server allows

[target]
platform = "civica"
base_url = "{civica}"
scope = "demo.learning-admin.com"
api_key = "${{DEMO_CIVICA_API_KEY}}"
poll_initial = 0.1                     # first status poll after a SetUser 202

[target.limits]
rate = 400                             # requests/s the portal allows us
burst = 40
concurrency = 32

[streams.users]
writers = 128                          # SetUser is async: many users wait on their 202 at once

[streams.certificates]
writers = 32

[mapping]
unmapped_lessons = "skip"              # completions of lessons without a certification are skipped

[mapping.certifications]               # Damstra lesson id -> Civica certification ref
{table}
"""


def demo_plan(damstra_url: str, civica_url: str) -> str:
    table = "\n".join(f'"{lesson}" = "CERT-{lesson}"' for lesson in range(101, 119))
    return PLAN.format(damstra=damstra_url, civica=civica_url, table=table)


def demo(*, records: int, report_path: str | None, quiet: bool, workdir: str) -> int:
    from migrator import api
    from migrator.plan import load_plan
    from migrator.platforms.civica.simulator import CivicaSimulator
    from migrator.platforms.damstra.simulator import DamstraSimulator
    from migrator.progress import TqdmProgress
    from migrator.report import human_summary
    from migrator.simulate.server import RunningSim
    from migrator.verify import verify

    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("demo-ledger.sqlite*"):
        stale.unlink()
    os.environ.setdefault("DEMO_DAMSTRA_ACCESS_KEY", "damstra-demo-key")
    os.environ.setdefault("DEMO_CIVICA_API_KEY", "civica-demo-key")
    damstra = DamstraSimulator(records=records, seed=7, malformed=0.002, access_key=os.environ["DEMO_DAMSTRA_ACCESS_KEY"])
    civica = CivicaSimulator(status_delay=0.2, api_key=os.environ["DEMO_CIVICA_API_KEY"])
    with RunningSim(damstra) as source, RunningSim(civica) as target:
        plan_file = folder / "plan.toml"
        plan_file.write_text(demo_plan(source.url, target.url))
        print(f"demo: {records} users, Damstra simulator at {source.url}, Civica simulator at {target.url}")
        print(f"demo: plan written to {plan_file}", flush=True)
        plan = load_plan(plan_file)
        report = aio.run(lambda: api.run(plan, progress=TqdmProgress(enabled=not quiet)))
        print("demo: verifying the target against the source ...", flush=True)
        report["verify"] = aio.run(verify, plan)
    print(human_summary(report))
    dead = report["totals"]["dead_lettered"]
    if dead:
        print(
            f"demo: the {dead} dead letter{'s' * (dead != 1)} are expected: the source simulator makes about one user in"
            " 500 without a first name (Civica requires one), and that user's completions follow it as"
            " missing_dependency. A real run with dead letters exits 1; the demo checks that every record is"
            " accounted for and that verify passes."
        )
    if report_path:
        Path(report_path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"demo: report written to {report_path}")
    balanced = all(
        s["read"] == s["written"] + s["skipped"] + s["dead_lettered"] for s in report["streams"].values()
    )
    ok = balanced and report["verify"]["ok"]
    if not ok:
        print("demo: FAILED (counts do not balance or verify found differences)", file=sys.stderr)
    return 0 if ok else 1
