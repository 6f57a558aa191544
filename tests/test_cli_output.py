"""Output a person reads (issue #8 items 7, 8, 12, 13, 14, 18): one-line errors with the same exit
code in every command, progress that suits a log, a readable status, verify's differences, and
simulators that say which credentials they accept and how to feed them data."""

from __future__ import annotations

import base64
import io
import json
import queue
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from migrator import api
from migrator.platforms.civica.simulator import CivicaSimulator, CivicaUser
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.progress import ConsoleProgress
from migrator.simulate.server import RunningSim
from tests.conftest import CIVICA_KEY, DAMSTRA_KEY, Sims, cli_env, write_plan

README = Path(__file__).resolve().parent.parent / "README.md"
LEDGER_HINT = "check the path: a ledger is the `ledger` file a plan names, written by `migrator run PLAN`"


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrator.cli", *map(str, args)], capture_output=True, text=True,
        env=env or cli_env(), timeout=120,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a mistake is allowed to print: no traceback, nothing else on stderr."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("migrator: error: "), done.stderr
    return lines[0]


def plan_without_sims(folder: Path, ledger: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.toml"
    plan.write_text(f"""ledger = "{ledger}"
[source]
platform = "damstra"
base_url = "https://app.velpic.com/api/v2"
access_key = "${{TEST_DAMSTRA_KEY}}"
[target]
platform = "civica"
base_url = "https://api.civica-learning.com/eu"
scope = "x.learning-admin.com"
api_key = "${{TEST_CIVICA_KEY}}"
""")
    return plan


# ---------------------------------------------------------------------------------- item 7: verify, wrong key
@pytest.mark.parametrize("sims", [{"damstra": {"records": 20}}], indirect=True)
@pytest.mark.parametrize(
    ("side", "variable", "status", "check"),
    [("target", "TEST_CIVICA_KEY", 403, "api_key or scope (the portal domain)"),
     ("source", "TEST_DAMSTRA_KEY", 401, "access_key")],
)
def test_verify_with_a_refused_key_says_so_in_one_line_and_exits_3(
    sims: Sims, tmp_path: Path, side: str, variable: str, status: int, check: str
) -> None:
    plan = write_plan(tmp_path, sims)
    done = cli("verify", plan, env=cli_env() | {variable: "wrong-key-0123"})
    assert done.returncode == 3
    line = error_line(done)
    assert line.startswith(f"migrator: error: the {side} refused the credentials (HTTP {status}) at ")
    assert f"check the {side} {check} in the plan." in line
    assert line.endswith(
        f"Verify only reads, nothing was changed: fix the plan and run `migrator verify {shlex.quote(str(plan))}` again"
    )
    assert "wrong-key-0123" not in done.stdout + done.stderr


# ------------------------------------------------------------------- items 7, 8: a ledger named on the command line
def _foreign_sqlite(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (name TEXT)")
    db.execute("INSERT INTO people VALUES ('ann')")
    db.commit()
    db.close()
    return path


NOT_A_LEDGER = {
    "text": (lambda p: p.write_text("name,email\nann,ann@example.org\n"), "is not a migrator ledger (not an SQLite file)"),
    "empty": (lambda p: p.write_bytes(b""), "is not a migrator ledger (not an SQLite file)"),
    "sqlite of something else": (
        _foreign_sqlite, "is an SQLite file but not a migrator ledger (it lacks the ledger's tables)"
    ),
}


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"]])
@pytest.mark.parametrize("kind", list(NOT_A_LEDGER))
def test_a_file_that_is_not_a_ledger_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path, command: list[str], kind: str
) -> None:
    make, says = NOT_A_LEDGER[kind]
    path = tmp_path / "people.db"
    make(path)
    before = path.read_bytes()
    done = cli(*command, path)
    assert done.returncode == 2
    assert error_line(done) == f"migrator: error: {path} {says}; {LEDGER_HINT}"
    assert path.read_bytes() == before  # not turned into a ledger by looking at it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.db"]


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"]])
def test_a_plan_given_for_a_ledger_names_the_ledger_it_points_to(tmp_path: Path, command: list[str]) -> None:
    plan = plan_without_sims(tmp_path, "records/migration.sqlite")
    done = cli(*command, plan)  # used to end in sqlite3.DatabaseError and a traceback
    assert done.returncode == 2
    assert error_line(done) == (
        f"migrator: error: {plan} is a plan, not a ledger; for the ledger it names:"
        f" migrator {' '.join(command)} {tmp_path / 'records' / 'migration.sqlite'}"
    )


def test_dlq_retry_refuses_a_plan_whose_ledger_is_not_a_ledger(tmp_path: Path) -> None:
    plan = plan_without_sims(tmp_path, "other.db")
    _foreign_sqlite(tmp_path / "other.db")
    before = (tmp_path / "other.db").read_bytes()
    done = cli("dlq", "retry", plan)
    assert done.returncode == 2
    assert error_line(done) == (
        f"migrator: error: {tmp_path / 'other.db'} is an SQLite file but not a migrator ledger (it lacks the"
        f" ledger's tables); nothing to retry: check `ledger` in {plan}, or run the migration first: migrator run {plan}"
    )
    assert (tmp_path / "other.db").read_bytes() == before


def test_a_missing_ledger_is_a_usage_mistake_with_the_same_words_in_every_command(tmp_path: Path) -> None:
    nosuch = tmp_path / "nosuch.sqlite"
    plan = plan_without_sims(tmp_path, "gone.sqlite")
    status = cli("status", nosuch)  # used to exit 3 while `dlq list` exited 2
    listed = cli("dlq", "list", nosuch)
    retried = cli("dlq", "retry", plan)
    assert (status.returncode, listed.returncode, retried.returncode) == (2, 2, 2)
    assert error_line(status) == f"migrator: error: no ledger at {nosuch}; {LEDGER_HINT}"
    assert error_line(listed) == f"migrator: error: no ledger at {nosuch}; {LEDGER_HINT}"
    assert error_line(retried) == (
        f"migrator: error: no ledger at {tmp_path / 'gone.sqlite'}; nothing to retry: check `ledger` in {plan},"
        f" or run the migration first: migrator run {plan}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.toml"]  # no empty ledger left behind


# ------------------------------------------------------------------------------------ item 12: progress in a log
@pytest.mark.parametrize("sims", [{"damstra": {"records": 300}}], indirect=True)
def test_progress_written_to_a_log_is_a_few_plain_lines(sims: Sims, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, sims)
    quiet = cli("run", plan, "--dry-run", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""

    done = cli("run", plan)  # stderr is a pipe here, as when it goes to a log file
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stderr
    assert "\x1b[" not in log and "\r" not in log  # no cursor movement, no redraws
    lines = log.splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines), log
    finished = [line for line in lines if line.endswith(", stream finished")]
    # one closing line per stream, printed when that stream ended (close() prints no such line)
    assert sorted(line.split()[1] for line in finished) == ["certificates", "groups", "users"]
    assert any(re.fullmatch(r"progress: users 300/300 \(100%\) [\d,]+ rec/s, stream finished", line) for line in finished)
    assert len(log.encode()) < 1000  # tqdm wrote ~18 KB per 1,000 users into the same pipe


def test_plain_lines_come_every_interval_and_when_the_stream_ends() -> None:
    out = io.StringIO()
    progress = ConsoleProgress(tty=False, out=out, interval=0.0)  # a line at every advance
    progress.start("users", 10_000, 3_999)
    progress.advance("users")
    assert re.fullmatch(r"progress: users 4,000/10,000 \(40%\) [\d,]+ rec/s\n", out.getvalue())
    progress.set_total("users", 4_001)
    progress.advance("users", 1)
    progress.finish("users")
    tail = out.getvalue().splitlines()[-2:]
    assert re.fullmatch(r"progress: users 4,001/4,001 \(100%\) [\d,]+ rec/s", tail[0])
    assert re.fullmatch(r"progress: users 4,001/4,001 \(100%\) [\d,]+ rec/s, stream finished", tail[1])
    written = out.getvalue()
    progress.advance("users")
    progress.close()
    assert out.getvalue() == written  # a finished stream says nothing more

    slow = io.StringIO()
    progress = ConsoleProgress(tty=False, out=slow, interval=3600.0)
    progress.start("groups", None, 0)
    progress.advance("groups", 7)
    assert slow.getvalue() == ""
    progress.close()  # the run ended without finishing the stream (stopped): its last count still shows
    assert re.fullmatch(r"progress: groups 7 [\d,]+ rec/s\n", slow.getvalue())

    quiet = io.StringIO()
    progress = ConsoleProgress(enabled=False, tty=False, out=quiet, interval=0.0)
    progress.start("users", 3, 0)
    progress.advance("users", 3)
    progress.finish("users")
    progress.close()
    assert quiet.getvalue() == ""


def test_on_a_terminal_a_finished_streams_bar_closes_when_the_stream_ends() -> None:
    out = io.StringIO()
    progress = ConsoleProgress(tty=True, out=out)
    progress.start("groups", None, 0)
    progress.start("users", 3, 0)
    progress.advance("groups", 2)
    progress.advance("users", 3)
    before = out.getvalue()
    progress.finish("users")
    closed = out.getvalue()[len(before):]
    assert re.search(r"users\s*: 100%.*3/3", closed) and closed.endswith("\n")  # drawn in full, left on screen
    assert "groups" not in closed  # the other stream's bar stays open
    written = out.getvalue()
    progress.advance("users", 5)
    assert out.getvalue() == written  # the closed bar no longer draws
    progress.close()
    assert re.search(r"groups\s*: 2rec", out.getvalue()[len(written):])


# --------------------------------------------------------------------------------------- item 13: status table
def _ledger_rows(ledger: Path) -> tuple[dict[str, dict[str, int]], list[tuple[int, float, float | None, str, str]], int]:
    db = sqlite3.connect(ledger)
    try:
        counts: dict[str, dict[str, int]] = {}
        for stream, state, n in db.execute("SELECT stream, state, count(*) FROM records GROUP BY stream, state"):
            counts.setdefault(stream, {})[state] = n
        runs = db.execute("SELECT id, started, finished, outcome, mode FROM runs ORDER BY id").fetchall()
        dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return counts, runs, dead
    finally:
        db.close()


def _row(table: str, stream: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [stream])


@pytest.mark.parametrize("sims", [{"damstra": {"records": 60, "malformed": 0.1}}], indirect=True)
def test_status_is_a_table_for_people_and_json_on_request(sims: Sims, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, sims)
    ledger = tmp_path / "ledger.sqlite"
    assert cli("run", plan, "--quiet", "--limit", "30").returncode in (0, 1)
    partly = cli("status", ledger)
    assert partly.returncode == 0, partly.stderr
    assert " ".join(_row(partly.stdout, "users")[7:]).startswith("partly read")

    assert cli("run", plan, "--quiet", "--resume").returncode in (0, 1)
    done = cli("status", ledger)
    assert done.returncode == 0 and done.stderr == ""
    table = done.stdout
    counts, runs, dead = _ledger_rows(ledger)
    assert dead > 0  # the generator's malformed users
    for stream, c in counts.items():
        row = _row(table, stream)
        expected = [sum(c.values()), c.get("written", 0), c.get("skipped", 0), c.get("dead", 0), c.get("pending", 0),
                    c.get("in_flight", 0)]
        assert row[1:7] == [f"{n:,}" for n in expected], row
        assert " ".join(row[7:]).startswith("read to the end"), row
    assert "(source reports 60)" in " ".join(_row(table, "users"))
    # runs in local ISO time, never epoch seconds
    shown = re.findall(r"#(\d+)\s+(\S+)\s+started (\S+)\s+ended (\S+)\s+(\S+)", table)
    assert [(int(i), mode, outcome) for i, mode, _, _, outcome in shown] == [(r[0], r[4], r[3]) for r in runs]
    assert [mode for _, mode, _, _, _ in shown] == ["run", "resume"]
    for (_, _, started, ended, _), (_, t0, t1, _, _) in zip(shown, runs, strict=True):
        assert datetime.fromisoformat(started).tzinfo is not None
        assert abs(datetime.fromisoformat(started).timestamp() - t0) < 1
        assert abs(datetime.fromisoformat(ended).timestamp() - t1) < 1
    assert not re.search(r"\b1[6-9]\d{8}\b", table)
    # dead letters by stream and class, and the command that shows them
    assert f"dead letters: {dead}" in table
    users_dead = next(line.split() for line in table.splitlines() if line.split()[:2] == ["users", "missing_field"])
    assert users_dead[2] == str(counts["users"]["dead"])
    assert table.rstrip().endswith(f"to see them: migrator dlq list {ledger}")

    as_json = cli("status", ledger, "--json")
    assert as_json.returncode == 0
    assert orjson.loads(as_json.stdout) == api.status(ledger)


# ------------------------------------------------------------------------------------- item 14: verify's findings
@pytest.mark.parametrize("sims", [{"damstra": {"records": 40}}], indirect=True)
def test_verify_prints_the_differences_and_where_the_full_list_is(sims: Sims, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, sims)
    assert cli("run", plan, "--quiet").returncode == 0

    def tamper(sim: CivicaSimulator) -> tuple[list[str], str, str]:
        names = sorted(sim.users)
        gone = names[:25]  # more than verify's 20 samples: the report must still hold them all
        for name in gone:
            sim.users.pop(name)
        changed = names[30]
        was = sim.users[changed].profile["forename"]
        sim.users[changed].profile["forename"] = "Changed"
        sim._insert(CivicaUser(profile={"username": "intruder", "forename": "In", "surname": "Truder"}))
        return gone, changed, was

    gone, changed, was = sims.civica.call(tamper, sims.civica.sim)

    done = cli("verify", plan)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "see report" not in out
    assert "verify: DIFFERENCES between source and target" in out
    assert f"    missing from the target: {', '.join(gone[:5])} (and 20 more)" in out
    assert "    in the target, not in the source: intruder\n" in out
    assert f'    differs {changed}: forename expected "{was}", target has "Changed"' in out
    assert out.rstrip().endswith(f"for the full list: migrator verify {plan} --report verify.json")

    report = tmp_path / "verify.json"
    written = cli("verify", plan, "--report", report)
    assert written.returncode == 1
    assert written.stdout.rstrip().endswith(f"full list in {report}")
    users = json.loads(report.read_text())["verify"]["streams"]["users"]
    assert users["missing"] == 25 and users["missing_samples"] == gone
    assert users["extra_samples"] == ["intruder"]
    assert users["mismatch_samples"] == [
        {"key": changed, "fields": {"forename": {"expected": was, "actual": "Changed"}}}
    ]


# ------------------------------------------------------------------------------------- item 18: simulators
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def sim_process(*args: str) -> Iterator[tuple[int, list[str]]]:
    """`migrator sim ...` on a free port; yields the port and the three lines it prints at start-up."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrator.cli", "sim", *args, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout or ()], daemon=True).start()
    try:
        # a simulator that prints fewer lines must fail the test, not hang it
        yield port, [lines.get(timeout=10) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _status(url: str, headers: dict[str, str], data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_sim_civica_prints_the_scope_and_key_it_accepts_and_takes_scope() -> None:
    with sim_process("civica", "--scope", "example.learning-admin.com", "--key", "k-123") as (port, lines):
        url = f"http://127.0.0.1:{port}"
        assert lines == [
            f"civica simulator listening on {url} (Ctrl-C to stop)",
            "  accepts: scope 'example.learning-admin.com' with api key 'k-123'"
            " (HTTP Basic: scope as user name, key as password)",
            f'  plan [target]: platform = "civica", base_url = "{url}", scope = "example.learning-admin.com",'
            ' api_key = "${CIVICA_API_KEY}" with CIVICA_API_KEY=k-123',
        ]
        call = f"{url}/GetProfileFields"
        assert _status(call, _basic("example.learning-admin.com", "k-123"), b"{}") == 200
        assert _status(call, _basic("demo.learning-admin.com", "k-123"), b"{}") == 403


@pytest.mark.parametrize(
    ("platform", "accepts", "allowed", "refused"),
    [
        ("civica", "  accepts: scope 'demo.learning-admin.com' with api key 'civica-demo-key'",
         ("/GetProfileFields", _basic("demo.learning-admin.com", "civica-demo-key")),
         ("/GetProfileFields", _basic("example.learning-admin.com", "civica-demo-key"))),
        ("damstra", "  accepts: access key 'damstra-demo-key' (AccessKey header)",
         ("/api/v2/group", {"AccessKey": "damstra-demo-key"}), ("/api/v2/group", {"AccessKey": "other"})),
    ],
    ids=["civica", "damstra"],
)
def test_sim_prints_its_default_credentials_and_they_work(
    platform: str, accepts: str, allowed: tuple[str, dict[str, str]], refused: tuple[str, dict[str, str]]
) -> None:
    body = b"{}" if platform == "civica" else None
    with sim_process(platform, "--records", "5") as (port, lines):
        assert lines[1].startswith(accepts)
        assert _status(f"http://127.0.0.1:{port}{allowed[0]}", allowed[1], body) == 200
        assert _status(f"http://127.0.0.1:{port}{refused[0]}", refused[1], body) in (401, 403)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["damstra", "--scope", "x.learning-admin.com"],
         "migrator: error: --scope is a civica setting; the damstra simulator does not take it"
         " (see migrator sim --help)"),
        (["civica", "--data", "nosuch.jsonl"], "migrator: error: --data nosuch.jsonl: No such file or directory"),
    ],
    ids=["scope-for-damstra", "missing-data-file"],
)
def test_sim_option_mistakes_are_one_line(args: list[str], says: str) -> None:
    done = cli("sim", *args, "--port", str(_free_port()))
    assert done.returncode == 2
    assert error_line(done) == says


def _json_examples(text: str) -> list[dict[str, Any]]:
    """JSON objects written in prose, each on one line or continued on the lines after it."""
    found, held = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not held and not stripped.startswith('{"kind"'):
            continue
        held = f"{held} {stripped}".strip()
        try:
            found.append(json.loads(held))
            held = ""
        except json.JSONDecodeError:
            continue
    return found


def _between(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def test_sim_help_and_readme_document_the_data_format_and_routes_and_the_examples_work(tmp_path: Path) -> None:
    done = cli("sim", "--help")
    assert done.returncode == 0
    help_text = done.stdout
    for needle in ("--data FILE.jsonl: one JSON object per line", "GET  /_sim/stats", "POST /_sim/rotate_key",
                   "--scope SCOPE", "scope `demo.learning-admin.com`", "`civica-demo-key`", "`AccessKey: damstra-demo-key`"):
        assert needle in help_text, needle
    damstra_rows = _json_examples(_between(help_text, "  damstra (replaces", "  civica ("))
    civica_rows = _json_examples(_between(help_text, "  civica (", "simulator routes"))
    assert {r["kind"] for r in damstra_rows} == {"group", "user", "lesson", "schedule"}
    assert [r["kind"] for r in civica_rows] == ["user"]

    readme = _between(README.read_text(), "## Simulators", "## Development")
    assert _json_examples(readme) == damstra_rows + civica_rows  # README and --help show the same examples
    for needle in ("`GET /_sim/stats`", "`POST /_sim/rotate_key`", "`demo.learning-admin.com`",
                   "migrator sim civica --port 8081 --scope example.learning-admin.com"):
        assert needle in readme, needle
    # the README's plan example uses a scope the documented command makes the simulator accept
    plan_scope = re.search(r'^scope = "([^"]+)"', README.read_text(), re.M)
    assert plan_scope and f"--scope {plan_scope.group(1)}" in readme

    # the documented examples load, and migrate as described
    (tmp_path / "damstra.jsonl").write_text("\n".join(json.dumps(r) for r in damstra_rows) + "\n")
    (tmp_path / "civica.jsonl").write_text("\n\n".join(json.dumps(r) for r in civica_rows) + "\n")
    source = RunningSim(DamstraSimulator(access_key=DAMSTRA_KEY, data=tmp_path / "damstra.jsonl"))
    target = RunningSim(CivicaSimulator(api_key=CIVICA_KEY, status_delay=0.05, data=tmp_path / "civica.jsonl"))
    with source, target:
        sims = Sims(source, target)
        plan = write_plan(tmp_path / "run", sims, certifications=range(101, 102))
        ran = cli("run", plan, "--quiet")
        assert ran.returncode == 0, ran.stderr[-2000:]
        state = sims.civica_state()
    assert set(state["users"]) == {"ann.lee", "bob.tan"}
    profile, groups, active = state["users"]["ann.lee"]
    assert (profile["forename"], profile["surname"], groups, active) == ("Ann", "Lee", {"Crew"}, True)
    assert [(user, ref) for user, ref, _ in state["awards"]] == [("ann.lee", "CERT-101")]
