"""Crash matrix (issue 4): a migration of >= 50k users SIGKILLed at 20 random moments in a row,
resumed each time; at the end the target must equal the source exactly and the ledger add up.

    .venv/bin/python benchmarks/chaos.py                      # 50,000 users, 20 kills (a few minutes)
    .venv/bin/python benchmarks/chaos.py --records 2000 --kills 5 --no-write   # a quick look

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine_line, now_utc, replace_section  # noqa: E402

from migrator.chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--min-gap", type=float, default=0.5, help="seconds a run lives at least before a kill")
    parser.add_argument("--max-gap", type=float, default=4.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="migrator-chaos-") as tmp:
        result = run_chaos(
            records=args.records, kills=args.kills, seed=args.seed, workdir=Path(tmp),
            min_gap=args.min_gap, max_gap=args.max_gap, timeout=3600,
        )
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    ok = result["lost"] == 0 and result["duplicated"] == 0 and result["verify_ok"] and not result["unsettled_in_ledger"]
    command = f".venv/bin/python benchmarks/chaos.py --records {args.records} --kills {args.kills} --seed {args.seed}"
    body = f"""## Crash matrix: SIGKILL at random moments, resume each time (issue 4)

Measured {now_utc()} on {machine_line()}; took {result['seconds']} s.

| users | kills survived | users written | certificates written | lost | duplicated | ledger unsettled | verify |
|---:|---:|---:|---:|---:|---:|---:|---|
| {result['records']:,} | {result['kills']} | {result['written']['users']:,} | {result['written']['certificates']:,} | {result['lost']} | {result['duplicated']} | {result['unsettled_in_ledger']} | {'ok' if result['verify_ok'] else 'MISMATCH'} |

AwardCertificate calls sent: {result['write_calls']['certificates']:,} for {result['written']['certificates']:,} awards
(equal means no award was ever sent twice); SetUser calls: {result['set_user_calls']}.
Each run lives {args.min_gap}–{args.max_gap} s (seeded) before `SIGKILL`; the next one is `migrator run --resume`.

Command: `{command}`
"""
    if not args.no_write:
        replace_section("chaos", body)
        print("wrote the chaos section of benchmarks/RESULTS.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
