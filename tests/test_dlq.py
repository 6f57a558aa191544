"""Dead letters you can act on: grouped listing, and a re-drive after fixing the plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from migrator.plan import load_plan
from migrator.verify import verify
from tests.conftest import Sims, cli_env, write_plan
from tests.expected import assert_target_matches, expected_state


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator.cli", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=180)


def test_list_then_retry_after_fixing_the_mapping(sims: Sims, tmp_path: Path) -> None:
    # lesson 101 is forgotten in the certification table and unmapped lessons are dead-lettered
    plan = write_plan(tmp_path, sims, certifications=range(102, 119), extra="")
    text = plan.read_text()
    plan.write_text(text.replace("[mapping.certifications]", '[mapping]\nunmapped_lessons = "dead_letter"\n[mapping.certifications]'))
    first = cli("run", str(plan), "--quiet")
    # finished, but with dead letters: "finished but incomplete", and the summary ends with the command
    assert first.returncode == 1, first.stderr[-2000:]
    ledger = tmp_path / "ledger.sqlite"
    assert first.stdout.rstrip().splitlines()[-1].endswith(f"see why with: migrator dlq list {ledger}")

    listed = cli("dlq", "list", str(tmp_path / "ledger.sqlite"), "--json")
    groups = orjson.loads(listed.stdout)
    unmapped = [g for g in groups if g["error_class"] == "unmapped_value"]
    assert len(unmapped) == 1  # one group, whatever the lesson numbers
    dead_before = unmapped[0]["count"]  # lessons 101, 119 and 120
    assert dead_before > 0 and unmapped[0]["stream"] == "certificates"
    assert "has no certification in mapping.certifications" in unmapped[0]["message"]
    human = cli("dlq", "list", str(tmp_path / "ledger.sqlite"))
    assert "unmapped_value" in human.stdout and str(dead_before) in human.stdout
    awards_before = sims.civica_state()["award_calls"]

    # fix the plan: lesson 101 now has a certification; re-drive only what is dead
    plan.write_text(plan.read_text().replace("[mapping.certifications]", '[mapping.certifications]\n"101" = "CERT-101"'))
    retried = cli("dlq", "retry", str(plan), "--quiet")
    assert retried.returncode == 1, retried.stderr[-2000:]  # lessons 119/120 are still dead letters
    assert f"re-driving {dead_before} certificates" in retried.stdout

    state = sims.civica_state()
    sent = state["award_calls"] - awards_before
    still_dead = orjson.loads(cli("dlq", "list", str(tmp_path / "ledger.sqlite"), "--json").stdout)
    remaining = sum(g["count"] for g in still_dead)
    # lesson 101's completions were sent, once each; lessons 119/120 are still without a certification
    assert sent > 0 and remaining > 0 and sent + remaining == dead_before
    assert all("lesson 119" in s["message"] or "lesson 120" in s["message"] for g in still_dead for s in g["samples"])
    assert_target_matches(state, expected_state(sims.damstra.sim))  # lessons 101..118, as now planned


async def test_verify_after_retry_is_clean(sims: Sims, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, sims)
    assert cli("run", str(plan), "--quiet").returncode == 0
    assert cli("dlq", "retry", str(plan)).stdout.strip() == "no dead letters match; nothing to retry"
    assert (await verify(load_plan(plan)))["ok"]
