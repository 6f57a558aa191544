"""`migrator demo [SOURCE TARGET]`: a real migration between two simulators on loopback, then verify.

Everything platform-specific comes from the registry (each platform's demo simulator and plan
section) and from the pair's mapping module (its [streams] and [mapping] tables).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson

from migrator import aio

DEFAULT_PAIR = ("damstra", "civica")

HEADER = """\
# A demo plan: {source_title} (source) -> {target_title} (target), both simulated on loopback.
ledger = "demo-ledger.sqlite"          # every record's fate; resume with `migrator run PLAN --resume`

"""


class DemoError(Exception):
    """The pair cannot be demonstrated (unknown, or no simulator on one side): one line for the user."""


def credential_env(name: str) -> str:
    """The environment variable the demo plan reads a platform's credential from."""
    return f"DEMO_{name.upper()}_KEY"


def demo_pairs() -> list[tuple[str, str]]:
    from mappings import pairs
    from migrator.platforms.registry import platforms

    known = platforms()
    return [
        (s, t) for s, t in pairs()
        if s in known and t in known and "source" in known[s].demo and "target" in known[t].demo
    ]  # fmt: skip


def demo_plan(source: str, target: str, source_url: str, target_url: str) -> str:
    from mappings import pair_module
    from migrator.platforms.registry import platform

    src, tgt = platform(source), platform(target)
    return (
        HEADER.format(source_title=src.title, target_title=tgt.title)
        + src.demo["source"].plan_section("source", source_url, credential_env(source))
        + "\n"
        + tgt.demo["target"].plan_section("target", target_url, credential_env(target))
        + "\n"
        + getattr(pair_module(source, target), "DEMO", "")
    )


def demo(*, source: str, target: str, records: int, report_path: str | None, quiet: bool, workdir: str) -> int:
    from migrator import api
    from migrator.plan import load_plan
    from migrator.platforms.registry import platform
    from migrator.progress import TqdmProgress
    from migrator.report import human_summary
    from migrator.simulate.server import RunningSim
    from migrator.verify import verify

    if (source, target) not in demo_pairs():
        pairs = ", ".join(f"{s} {t}" for s, t in demo_pairs())
        raise DemoError(f"no demo for {source} → {target}; `migrator platforms` lists the pairs; demos: {pairs}")
    src, tgt = platform(source).demo["source"], platform(target).demo["target"]
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("demo-ledger.sqlite*"):
        stale.unlink()
    os.environ.setdefault(credential_env(source), src.credential)
    os.environ.setdefault(credential_env(target), tgt.credential)
    source_sim = src.simulator(records, os.environ[credential_env(source)])
    target_sim = tgt.simulator(records, os.environ[credential_env(target)])
    with RunningSim(source_sim) as source_at, RunningSim(target_sim) as target_at:
        plan_file = folder / "plan.toml"
        plan_file.write_text(demo_plan(source, target, source_at.url, target_at.url))
        print(f"demo: {records} users, {source} simulator at {source_at.url}, {target} simulator at {target_at.url}")
        print(f"demo: plan written to {plan_file}", flush=True)
        plan = load_plan(plan_file)
        report = aio.run(lambda: api.run(plan, progress=TqdmProgress(enabled=not quiet)))
        print("demo: verifying the target against the source ...", flush=True)
        report["verify"] = aio.run(verify, plan)
    print(human_summary(report))
    dead = report["totals"]["dead_lettered"]
    why = "; ".join(w for w in (src.expected_dead, tgt.expected_dead) if w)
    if dead and why:
        print(
            f"demo: the {dead} dead letter{'s' * (dead != 1)} are expected: {why}. A real run with dead letters"
            " exits 1; the demo checks that every record is accounted for and that verify passes."
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
