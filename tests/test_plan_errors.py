"""Mistakes in a plan: refused before anything runs, as one line that names the key, the bad value and the fix.

Each test writes the plan a user would write, runs `migrator run PLAN --dry-run` and reads stderr and the
exit code, as a person at a terminal would. No host is contacted: the plans point at a closed loopback port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import msgspec
import pytest

from mappings.damstra_to_civica import Options
from migrator.cli import main
from migrator.plan import explain, load_plan
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
CIVICA_SECRET = "ck-never-printed-5e1a"


def plan_text(*, source: str = "", source_limits: str = "", target_limits: str = "", streams: str = "",
              mapping: str = "", api_key: str = "${CIVICA_API_KEY}") -> str:
    return f"""
ledger = "ledger.sqlite"
[source]
platform = "damstra"
base_url = "http://127.0.0.1:9/api/v2"
access_key = "${{DAMSTRA_ACCESS_KEY}}"
{source}
[source.limits]
concurrency = 4
{source_limits}
[target]
platform = "civica"
base_url = "http://127.0.0.1:9"
scope = "demo.learning-admin.com"
api_key = "{api_key}"
[target.limits]
concurrency = 4
{target_limits}
{streams}
[mapping]
{mapping}
[mapping.certifications]
"101" = "CERT-101"
"""


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMSTRA_ACCESS_KEY", "dk-plan-errors")
    monkeypatch.setenv("CIVICA_API_KEY", CIVICA_SECRET)


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """Run the plan; it must be refused with exit code 2 and one line on stderr. Returns that line."""
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    code = main(["run", str(plan), "--dry-run", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("migrator: error: plan: "), err
    assert "Traceback" not in err and CIVICA_SECRET not in err + out
    assert not (tmp_path / "ledger.sqlite").exists()  # refused before anything ran
    return lines[0].removeprefix("migrator: error: plan: ")


# ---------------------------------------------------------------------------------- empty secrets
def test_an_exported_but_empty_secret_is_refused_when_the_plan_loads(tmp_path: Path) -> None:
    """`export CIVICA_API_KEY=` (set, but empty): the whole CLI, in its own process, as a user runs it."""
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_text())
    env = {**cli_env(), "DAMSTRA_ACCESS_KEY": "dk-plan-errors", "CIVICA_API_KEY": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "migrator.cli", "run", str(plan), "--dry-run", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr == (
        "migrator: error: plan: `target.api_key`: environment variable CIVICA_API_KEY is empty;"
        " export CIVICA_API_KEY=... before running\n"
    )
    assert not (tmp_path / "ledger.sqlite").exists()


def test_a_secret_of_only_whitespace_is_empty_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAMSTRA_ACCESS_KEY", " \n")
    line = refused(tmp_path, capsys, plan_text())
    assert line == (
        "`source.access_key`: environment variable DAMSTRA_ACCESS_KEY is empty;"
        " export DAMSTRA_ACCESS_KEY=... before running"
    )


def test_an_unset_secret_is_still_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIVICA_API_KEY")
    line = refused(tmp_path, capsys, plan_text())
    assert line == (
        "`target.api_key`: environment variable CIVICA_API_KEY is not set; export CIVICA_API_KEY=... before running"
    )


def test_an_empty_secret_file_is_refused_when_the_plan_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    secret = tmp_path / "civica.key"
    secret.write_text("\n")  # what `echo > civica.key` leaves
    line = refused(tmp_path, capsys, plan_text(api_key=f"${{file:{secret}}}"))
    assert line == f"`target.api_key`: secret file {secret} is empty; write the value into it"


def test_a_secret_file_with_a_key_is_accepted(tmp_path: Path, keys: None) -> None:
    secret = tmp_path / "civica.key"
    secret.write_text(CIVICA_SECRET + "\n")
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_text(api_key=f"${{file:{secret}}}"))
    assert load_plan(plan).target.api_key == CIVICA_SECRET


# ---------------------------------------------------------------------------------- enum values
class Inner(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["fast", "safe"] | None = None


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: list[Inner] = []


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param(
            {"mapping": 'unmapped_lessons = "skp"'},
            "`mapping.unmapped_lessons`: 'skp' is not allowed; choose one of: skip, dead_letter",
            id="mapping-option",
        ),
        pytest.param(
            {"streams": '[streams.users]\nexisting = "overwrite"'},
            "`streams.users.existing`: 'overwrite' is not allowed; choose one of: conflict, update, skip",
            id="stream-existing",
        ),
        pytest.param(
            {"streams": "[streams.certificates]\nexisting = 1"},
            "`streams.certificates.existing`: 1 is not allowed; choose one of: conflict, update, skip",
            id="stream-existing-wrong-type",
        ),
        pytest.param(
            {"source": 'unknown_status = "ignore"'},
            "`source.unknown_status`: 'ignore' is not allowed; choose one of: dead_letter, active, inactive",
            id="source-unknown-status",
        ),
        pytest.param(
            {"target_limits": 'rate = "fast"'},
            "`target.limits.rate`: 'fast' is not allowed; give requests per second (a number > 0),"
            ' "unlimited", or leave it out to adapt',
            id="limits-rate-word",
        ),
        pytest.param(
            {"source_limits": "rate = 0"},
            "`source.limits.rate`: 0 is not allowed; give requests per second (a number > 0),"
            ' "unlimited", or leave it out to adapt',
            id="limits-rate-zero",
        ),
    ],
)
def test_an_enum_error_names_the_key_the_value_and_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None, sections: dict[str, str], expected: str
) -> None:
    assert refused(tmp_path, capsys, plan_text(**sections)) == expected


def test_the_enum_choices_come_from_the_declared_types() -> None:
    """No key is hard-coded: a Literal anywhere under the plan is found by walking its Structs."""
    raw = {"inner": [{"mode": "fast"}, {"mode": "quick"}]}
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(raw, Outer)
    assert explain(err.value, root=Outer, prefix=["x"], raw=raw) == (
        "`x.inner.1.mode`: 'quick' is not allowed; choose one of: fast, safe"
    )
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert({"unmapped_lessons": "Skip"}, Options)
    assert explain(err.value, root=Options, prefix=["mapping"], raw={"unmapped_lessons": "Skip"}) == (
        "`mapping.unmapped_lessons`: 'Skip' is not allowed; choose one of: skip, dead_letter"
    )


# ---------------------------------------------------------------------------------- other keys
def test_an_unknown_mapping_key_lists_the_keys_allowed_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    line = refused(tmp_path, capsys, plan_text(mapping='unmaped_lessons = "skip"'))
    assert line == (
        "unknown key `mapping.unmaped_lessons`: remove it or fix its spelling;"
        " allowed keys here: certifications, unmapped_lessons, lowercase_usernames"
    )


def test_a_bad_value_in_a_table_names_its_own_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    text = plan_text().replace('"101" = "CERT-101"', '"101" = "CERT-101"\n"102" = 102')
    assert refused(tmp_path, capsys, text) == "`mapping.certifications.102`: Expected `str`, got `int`"
