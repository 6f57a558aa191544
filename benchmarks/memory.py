"""Peak RSS of a real `migrator run` for 10k and 100k users; the ratio must stay under 1.3.

    make bench-memory              # or: .venv/bin/python benchmarks/memory.py [--sizes 10000 100000]

Both simulators run as their own processes (`migrator sim damstra|civica --port P`) on 127.0.0.1;
the migration is the installed CLI, `migrator run PLAN --quiet`, as a child process. Its peak RSS
is the kernel's own figure (ru_maxrss from wait4), not a sample. Streams: groups and users
(users need their groups' target ids, and Civica groups cost no request); certificates are
disabled so the run is one write stream whose size we control exactly. The section
"memory" of benchmarks/RESULTS.md is rewritten with the figures, the commands and the date.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Sim,
    machine_line,
    migrate,
    now_utc,
    replace_section,
    shown,
    write_plan,
)

GOAL = 1.3
STATUS_DELAY = 0.05  # Civica applies a SetUser 50 ms after its 202: every user is polled once or more
WRITERS = 128
TARGET_LIMITS = {"concurrency": 64, "rate": 1_000_000, "burst": 10_000}  # no limit in force
SOURCE_LIMITS = {"concurrency": 8, "rate": 1_000_000, "burst": 10_000}


def measure(size: int, workdir: Path) -> dict:
    folder = workdir / f"n{size}"
    with (
        Sim("damstra", folder, args=["--records", str(size), "--seed", "11"]) as damstra,
        Sim("civica", folder, args=["--status-delay", str(STATUS_DELAY)]) as civica,
    ):
        plan = write_plan(
            folder,
            damstra.url,
            civica.url,
            writers=WRITERS,
            target_limits=TARGET_LIMITS,
            source_limits=SOURCE_LIMITS,
            poll_initial=STATUS_DELAY,
        )
        m = migrate(plan, timeout=max(120.0, size / 200))
        target = civica.stats()
        sims = [
            shown(damstra.cmd).replace(str(damstra.port), "$DAMSTRA_PORT") + " &",
            shown(civica.cmd).replace(str(civica.port), "$CIVICA_PORT") + " &",
        ]
    users = (m.report or {}).get("streams", {}).get("users", {})
    if users.get("written") != size or target.get("users") != size:
        raise RuntimeError(
            f"{size} users: migrator wrote {users.get('written')}, Civica holds {target.get('users')}"
        )
    return {
        "size": size,
        "rss_mb": m.rss_mb,
        "seconds": m.seconds,
        "cpu": m.cpu_seconds,
        "rate": size / m.seconds,
        "requests": target["requests"],
        "cmd": shown(m.cmd).replace(str(folder), "$WORK"),
        "plan": plan.read_text()
        .replace(damstra.url, "http://127.0.0.1:$DAMSTRA_PORT")
        .replace(civica.url, "http://127.0.0.1:$CIVICA_PORT"),
        "sims": sims,
        "samples": m.rss_samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="migrator-bench-mem-") as tmp:
        for size in args.sizes:
            print(f"memory: migrating {size:,} users ...", flush=True)
            row = measure(size, Path(tmp))
            rows.append(row)
            print(
                f"memory: {size:>9,} users  peak RSS {row['rss_mb']:6.1f} MB  "
                f"{row['seconds']:6.1f} s  {row['rate']:7.0f} users/s",
                flush=True,
            )
    small, large = rows
    ratio = large["rss_mb"] / small["rss_mb"]
    ok = ratio < GOAL
    verdict = "met" if ok else "NOT met"
    print(
        f"memory: peak RSS ratio {large['size']:,} / {small['size']:,} users = {ratio:.3f} (goal < {GOAL}: {verdict})"
    )
    if not args.no_write:
        body = render(rows, ratio, ok, time.monotonic() - started)
        replace_section("memory", body)
        print("memory: benchmarks/RESULTS.md section 'memory' rewritten")
    return 0 if ok else 1


def render(rows: list[dict], ratio: float, ok: bool, wall: float) -> str:
    small, large = rows
    lines = [
        "## Memory: peak RSS of the migrating process (issue 2)",
        "",
        f"Measured {now_utc()} on {machine_line()}; the whole script took {wall:.0f} s.",
        "",
        "| users | peak RSS (MB) | run time (s) | users/s | CPU (s) | Civica requests |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['rss_mb']:.1f} | {r['seconds']:.1f} | {r['rate']:.0f} | {r['cpu']:.1f} | {r['requests']:,} |"
        )
    lines += [
        "",
        f"**Ratio {large['size']:,} / {small['size']:,} users: {ratio:.3f}** (goal < {GOAL}: "
        f"{'met' if ok else 'NOT met'}).",
        "",
        "Peak RSS is the kernel's `ru_maxrss` for the `migrator run` process, read with `wait4` when it",
        "exits (not sampled, so no peak is missed). Streams: groups + users; certificates disabled.",
        f"Civica applies each SetUser {STATUS_DELAY * 1000:.0f} ms after its 202; {WRITERS} user writers;",
        "no rate limit is in force (the plan sets a rate far above what the machine can reach).",
        "",
        "Commands (run by `make bench-memory`, i.e. `.venv/bin/python benchmarks/memory.py`):",
        "",
        "```",
        *large["sims"],
        large["cmd"],
        "```",
        "",
        "<details><summary>$WORK/plan.toml (keys come from BENCH_DAMSTRA_KEY / BENCH_CIVICA_KEY)</summary>",
        "",
        "```toml",
        large["plan"].rstrip(),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
