"""Shared benchmark plumbing: simulator processes, plan files, measured CLI runs, RESULTS.md sections.

Everything here talks to 127.0.0.1 only. Every wait has a deadline, so a stuck process ends the
benchmark with an error instead of hanging it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "RESULTS.md"
LOOPBACK = "127.0.0.1"
DAMSTRA_KEY = "bench-damstra-key-5d1c"
CIVICA_KEY = "bench-civica-key-9e27"
SCOPE = "demo.learning-admin.com"  # the only scope `migrator sim civica` accepts


def migrator_cmd() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).parent / "migrator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "migrator.cli"]


def shown(cmd: list[str]) -> str:
    """A command as a person would type it from the repository root."""
    out = []
    for part in cmd:
        p = str(part)
        if p.startswith(str(ROOT) + "/"):
            p = p[len(str(ROOT)) + 1 :]
        p = p.replace(DAMSTRA_KEY, "$BENCH_DAMSTRA_KEY").replace(CIVICA_KEY, "$BENCH_CIVICA_KEY")
        out.append(p)
    return " ".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_DAMSTRA_KEY"] = DAMSTRA_KEY
    env["BENCH_CIVICA_KEY"] = CIVICA_KEY
    env["PYTHONUNBUFFERED"] = "1"
    return env


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


# ---------------------------------------------------------------------------------------------
# simulator processes


class Sim(AbstractContextManager["Sim"]):
    """One simulator in its own process on 127.0.0.1.

    Both run as `migrator sim PLATFORM`; Civica's /_sim/stats carries the write counters
    (set_user_calls, award_calls) the kill-and-resume row needs.
    """

    def __init__(
        self, platform_name: str, workdir: Path, *, args: list[str] | None = None
    ):
        self.platform = platform_name
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        key = DAMSTRA_KEY if platform_name == "damstra" else CIVICA_KEY
        base = migrator_cmd() + ["sim"]
        self.cmd = [*base, platform_name, "--port", str(self.port), "--key", key, *(args or [])]
        self.log_path = workdir / f"sim-{platform_name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sim:
        self.start()
        self.wait_ready()
        return self

    def start(self) -> None:
        """Spawn the process; `wait_ready` blocks until it answers (start several, then wait)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=bench_env(), cwd=ROOT
            )

    def wait_ready(self, within: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.platform} simulator exited: {self.log_path.read_text()[-500:]}")
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.platform} simulator did not start within {within:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def stats(self) -> dict[str, Any]:
        return http_json(f"{self.url}/_sim/stats")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# ---------------------------------------------------------------------------------------------
# plans


def limits_toml(limits: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in limits.items())


def write_plan(
    folder: Path,
    damstra_url: str,
    civica_url: str,
    *,
    writers: int = 64,
    cert_writers: int = 16,
    certificates: bool = False,
    target_limits: dict[str, Any] | None = None,
    source_limits: dict[str, Any] | None = None,
    poll_initial: float = 0.05,
    poll_max: float = 0.5,
    ledger: str = "ledger.sqlite",
    name: str = "plan.toml",
) -> Path:
    """A Damstra -> Civica plan. Groups always run (users wait on their groups' target ids; Civica
    groups cost no request); certificates only when asked."""
    table = "\n".join(f'"{n}" = "CERT-{n}"' for n in range(101, 121))
    mapping = (
        f'\n[mapping]\nunmapped_lessons = "skip"\n\n[mapping.certifications]\n{table}\n'
        if certificates
        else ""
    )
    target_limits = target_limits or {"concurrency": 64, "rate": "unlimited"}
    source_limits = source_limits or {"concurrency": 8, "rate": "unlimited"}
    certs = (
        f"[streams.certificates]\nwriters = {cert_writers}\n"
        if certificates
        else "[streams.certificates]\nenabled = false\n"
    )
    text = f"""# generated by benchmarks/harness.py
ledger = "{ledger}"

[source]
platform = "damstra"
base_url = "{damstra_url}/api/v2"
access_key = "${{BENCH_DAMSTRA_KEY}}"

[source.limits]
{limits_toml(source_limits)}

[target]
platform = "civica"
base_url = "{civica_url}"
scope = "{SCOPE}"
api_key = "${{BENCH_CIVICA_KEY}}"
poll_initial = {poll_initial}
poll_max = {poll_max}

[target.limits]
{limits_toml(target_limits)}

[streams.users]
writers = {writers}

{certs}{mapping}"""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(ledger + "*"):
        stale.unlink()
    path = folder / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# measured child processes


@dataclass
class Measured:
    cmd: list[str]
    returncode: int | None  # None: we killed it
    seconds: float
    max_rss_kb: int  # the child's own peak resident set (kernel's ru_maxrss via wait4)
    cpu_seconds: float  # user + system
    output: str
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, VmRSS kB)
    killed_at: float | None = None
    report: dict[str, Any] | None = None

    @property
    def rss_mb(self) -> float:
        return self.max_rss_kb / 1024


def _vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_measured(
    cmd: list[str],
    *,
    cwd: Path,
    timeout: float,
    kill_after: float | None = None,
    sample_every: float = 0.5,
    report_path: Path | None = None,
    on_tick: Callable[[float], bool] | None = None,
) -> Measured:
    """Run `cmd`, wait for it with wait4 (exact peak RSS and CPU), SIGKILL it at `kill_after` s
    or as soon as `on_tick(elapsed)` returns True (it is called every ~20 ms while the child runs).

    A run still going at `timeout` is killed and raised as an error.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    out_path = cwd / f"out-{time.monotonic_ns()}.log"
    with out_path.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=bench_env(), cwd=cwd)
    samples: list[tuple[float, int]] = []
    next_sample = started
    killed_at = None
    timed_out = False
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.monotonic()
        if now >= next_sample:
            rss = _vm_rss_kb(proc.pid)
            if rss is not None:
                samples.append((round(now - started, 2), rss))
            next_sample = now + sample_every
        limit_hit = now - started >= (kill_after if kill_after is not None else timeout)
        asked = killed_at is None and on_tick is not None and on_tick(now - started)
        if killed_at is None and (asked or limit_hit):
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = now - started
            timed_out = limit_hit and not asked and kill_after is None
        time.sleep(0.02)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen so
    output = out_path.read_text(errors="replace")
    out_path.unlink()
    if timed_out:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {shown(cmd)}\n{output[-2000:]}")
    report = None
    if report_path is not None and report_path.exists():
        report = json.loads(report_path.read_text())
    return Measured(
        cmd=cmd,
        returncode=None if killed_at is not None else proc.returncode,
        seconds=seconds,
        max_rss_kb=rusage.ru_maxrss,
        cpu_seconds=rusage.ru_utime + rusage.ru_stime,
        output=output,
        rss_samples=samples,
        killed_at=killed_at,
        report=report,
    )


def migrate(
    plan: Path,
    *,
    timeout: float,
    extra: list[str] | None = None,
    kill_after: float | None = None,
    on_tick: Callable[[float], bool] | None = None,
    tag: str = "run",
    prefix: list[str] | None = None,
) -> Measured:
    """`migrator run PLAN --quiet --report ...` as a child process, measured (`prefix`: e.g. a profiler)."""
    report = plan.parent / f"report-{tag}.json"
    report.unlink(missing_ok=True)
    cmd = [
        *(prefix or []),
        *migrator_cmd(),
        "run",
        str(plan),
        "--quiet",
        "--report",
        str(report),
        *(extra or []),
    ]
    m = run_measured(
        cmd, cwd=plan.parent, timeout=timeout, kill_after=kill_after, report_path=report, on_tick=on_tick
    )
    if m.killed_at is None and m.returncode != 0:
        raise RuntimeError(f"migrator exited {m.returncode}: {shown(cmd)}\n{m.output[-3000:]}")
    return m


# ---------------------------------------------------------------------------------------------
# RESULTS.md sections


def machine_line() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section:{name}:start -->", f"<!-- section:{name}:end -->"


def read_section(name: str) -> str | None:
    if not RESULTS.exists():
        return None
    text = RESULTS.read_text()
    start, end = _markers(name)
    if start not in text or end not in text:
        return None
    return text[text.index(start) : text.index(end) + len(end)]


def wrap_section(name: str, body: str) -> str:
    start, end = _markers(name)
    return f"{start}\n{body.rstrip()}\n{end}"


def replace_section(name: str, body: str, *, header: str = "# Benchmark results\n") -> None:
    """Rewrite one marked section of RESULTS.md in place (append it if missing)."""
    block = wrap_section(name, body)
    text = RESULTS.read_text() if RESULTS.exists() else header
    old = read_section(name)
    if old is not None:
        text = text.replace(old, block)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text if text.endswith("\n") else text + "\n")
