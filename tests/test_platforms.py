"""Every platform a folder, every pair a command: the registry is the only place platforms are named."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from mappings import pairs
from migrator import plan
from migrator.platforms.registry import platforms
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
# the modules that must work for any platform: none of them may name one (the demo's default pair aside)
PLATFORM_FREE = ["engine", "plan", "cli", "api", "verify", "report", "demo", "chaos", "connectors", "ledger",
                 "progress", "dlq", "paging"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator.cli", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=180, cwd=ROOT)


def test_no_module_outside_the_platform_folders_names_a_platform() -> None:
    names = list(platforms())
    assert {"damstra", "civica"} <= set(names)
    pattern = re.compile("|".join(names), re.IGNORECASE)
    for module in PLATFORM_FREE:
        for n, line in enumerate((ROOT / "migrator" / f"{module}.py").read_text().splitlines(), 1):
            if module == "demo" and line.startswith("DEFAULT_PAIR = "):
                continue
            assert not pattern.search(line), f"migrator/{module}.py:{n} names a platform: {line.strip()}"


def test_the_plan_accepts_exactly_the_registered_sides() -> None:
    assert set(plan.SOURCE_PLATFORMS) == {n for n, p in platforms().items() if p.open_source}
    assert set(plan.TARGET_PLATFORMS) == {n for n, p in platforms().items() if p.open_target}


def test_platforms_lists_directions_streams_and_pairs() -> None:
    done = cli("platforms", "--json")
    assert done.returncode == 0, done.stderr
    listing = orjson.loads(done.stdout)
    by_name = {p["name"]: p for p in listing["platforms"]}
    assert by_name["damstra"]["directions"] == ["source"] and by_name["civica"]["directions"] == ["target"]
    assert by_name["civica"]["streams"]["certificates"] == "Certificate"
    assert {(p["source"], p["target"]) for p in listing["pairs"]} == set(pairs())
    human = cli("platforms")
    assert "damstra -> civica  (migrator demo damstra civica)" in human.stdout


def test_demo_of_a_pair_runs_end_to_end_and_an_unknown_pair_is_one_line(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    done = cli("demo", "damstra", "civica", "--records", "300", "--report", str(report), "--quiet",
               "--workdir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = orjson.loads(report.read_bytes())
    assert result["verify"]["ok"]
    for stream in result["streams"].values():
        assert stream["read"] == stream["written"] + stream["skipped"] + stream["dead_lettered"] > 0
    wrong = cli("demo", "civica", "damstra", "--quiet", "--workdir", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip() == (
        "migrator: error: no demo for civica → damstra; `migrator platforms` lists the pairs; demos: damstra civica"
    )
