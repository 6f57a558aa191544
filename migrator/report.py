"""The run report: counts from the ledger (the whole migration), requests and time from this run."""

from __future__ import annotations

import shlex
from typing import Any

import orjson

from migrator.http import RequestStats
from migrator.ledger import DEAD, IN_FLIGHT, PENDING, SKIPPED, WRITTEN, Ledger

KEYS = ("read", "written", "skipped", "dead_lettered", "pending", "retried", "requests", "rate_limited")


def build_report(
    ledger: Ledger, runners: list[Any], setup: RequestStats, seconds: float, *, dry_run: bool, plan: Any, hosts: list[Any]
) -> dict[str, Any]:
    counts = ledger.counts()
    streams: dict[str, Any] = {}
    losses: list[dict[str, Any]] = []
    totals: dict[str, Any] = {k: 0 for k in KEYS} | {"status_counts": {}, "seconds": round(seconds, 3)}
    for runner in runners:
        c = counts.get(runner.name, {})
        req = runner.stats.requests
        entry: dict[str, Any] = {
            "read": sum(c.values()),
            "written": c.get(WRITTEN, 0),
            "skipped": c.get(SKIPPED, 0),
            "dead_lettered": c.get(DEAD, 0),
            "pending": c.get(PENDING, 0) + c.get(IN_FLIGHT, 0),
            "retried": req.retries,
            "requests": req.requests,
            "status_counts": {str(k): v for k, v in sorted(req.status_counts.items())},
            "rate_limited": req.rate_limited,
            "seconds": round(runner.stats.seconds, 3),
            "records_per_second": round(runner.stats.settled / runner.stats.seconds, 1) if runner.stats.seconds else 0.0,
        }
        if dry_run:
            entry["dry_run"] = {**runner.stats.dry, "estimated_write_requests": runner.stats.dry_requests}
        streams[runner.name] = entry
        for key in KEYS:
            totals[key] += entry[key]
        for code, n in entry["status_counts"].items():
            totals["status_counts"][code] = totals["status_counts"].get(code, 0) + n
    # counted in the ledger as records are written, so a resumed run reports the whole migration
    chosen = {r.name for r in runners}
    losses = [
        {"stream": stream, "field": field, "reason": reason, "records": n}
        for stream, field, reason, n in ledger.losses()
        if stream in chosen
    ]
    totals["requests"] += setup.requests
    settled = sum(r.stats.settled for r in runners)
    totals["records_per_second"] = round(settled / seconds, 1) if seconds else 0.0
    report: dict[str, Any] = {
        "run": {"mode": "dry-run" if dry_run else "run", "ledger": None if dry_run else str(plan.ledger_path)},
        "streams": streams,
        "totals": totals,
        "fidelity_losses": losses,
    }
    if ledger.get_meta("losses_counted_since_upgrade"):
        report["fidelity_losses_note"] = "counted since this ledger was upgraded; its earlier runs are not included"
    if dry_run:
        report["dry_run"] = _estimate(report, plan)
    return report


def _estimate(report: dict[str, Any], plan: Any) -> dict[str, Any]:
    """Requests and time the real run needs at the configured limits (reads counted as seen now)."""
    streams = report["streams"]
    writes = sum(s["dry_run"]["estimated_write_requests"] for s in streams.values())
    reads = report["totals"]["requests"]
    source_rate, target_rate = plan.source.limits.rate, plan.target.limits.rate
    def total(verdict: str) -> int:
        return sum(s["dry_run"].get(verdict, 0) for s in streams.values())

    est: dict[str, Any] = {
        "would_create": total("would_create"),
        "would_update": total("would_update"),
        "would_conflict": total("would_conflict"),
        "would_skip_existing": total("would_skip_existing"),
        "already_in_target": total("already_in_target"),
        "already_in_target_written_again": total("already_in_target_written_again"),
        "would_skip": report["totals"]["skipped"],
        "would_reject": report["totals"]["dead_lettered"],
        "source_requests": reads,
        "target_requests": writes,
    }
    for side, rate, requests in (("target", target_rate, writes), ("source", source_rate, reads)):
        if isinstance(rate, float | int):
            est[f"{side}_seconds_at_limit"] = round(requests / rate, 1)
    if not (isinstance(target_rate, float | int) and isinstance(source_rate, float | int)):
        est["note"] = "a host without a fixed rate (adaptive or unlimited) runs as fast as the server allows"
    return est


def human_summary(report: dict[str, Any]) -> str:
    lines = []
    head = f"{'stream':<14}{'read':>9}{'written':>9}{'skipped':>9}{'dead':>7}{'requests':>10}{'retried':>9}{'429s':>7}{'rec/s':>9}"
    lines.append(head)
    for name, s in report["streams"].items():
        lines.append(
            f"{name:<14}{s['read']:>9}{s['written']:>9}{s['skipped']:>9}{s['dead_lettered']:>7}"
            f"{s['requests']:>10}{s['retried']:>9}{s['rate_limited']:>7}{s['records_per_second']:>9}"
        )
    t = report["totals"]
    lines.append(
        f"{'total':<14}{t['read']:>9}{t['written']:>9}{t['skipped']:>9}{t['dead_lettered']:>7}"
        f"{t['requests']:>10}{t['retried']:>9}{t['rate_limited']:>7}{t['records_per_second']:>9}"
    )
    lines.append(f"time: {t['seconds']} s")
    if t.get("pending"):
        lines.append(f"not finished: {t['pending']} records pending; run again with --resume")
    for loss in report["fidelity_losses"]:
        lines.append(f"fidelity loss: {loss['stream']}.{loss['field']} ({loss['records']} records): {loss['reason']}")
    if "dry_run" in report:
        lines.extend(_dry_run_lines(report))
    if "verify" in report:
        lines.append(verify_summary(report["verify"]))
    lines.extend(_ending_lines(report))
    return "\n".join(lines)


def _dry_run_lines(report: dict[str, Any]) -> list[str]:
    d = report["dry_run"]
    lines = [
        f"dry run: would create {d['would_create']}, update {d['would_update']}, skip {d['would_skip']},"
        f" reject {d['would_reject']}; {d['target_requests']} target requests"
        + (f" ≈ {d['target_seconds_at_limit']} s at the configured rate" if "target_seconds_at_limit" in d else "")
    ]
    for name, s in report["streams"].items():
        existing = {k: v for k, v in s["dry_run"].items() if k.startswith(("already", "would_conflict", "would_skip_e"))}
        if existing:
            lines.append(f"  {name}: already in the target: " + ", ".join(f"{_VERDICTS[k]} {v}" for k, v in existing.items()))
    for group in d.get("rejects", []):
        example = group["samples"][0]["message"] if group["samples"] else group["message"]
        lines.append(f"  would reject {group['count']} {group['stream']}: {group['error_class']}: {example[:160]}"
                     + (" (and alike)" if group["count"] > 1 else ""))
    for ref in d.get("references", []):
        if ref["verdict"] != "exists":
            lines.append(
                f"  {ref['kind']} '{ref['value']}' ({ref['records']} records): {ref['verdict']}: {ref['note']}"
            )
    return lines


_VERDICTS = {
    "already_in_target": "identical (settled without a write)",
    "already_in_target_written_again": "not checked by this target on write (would be written again)",
    "would_conflict": "different (dead-lettered as conflict: existing = \"conflict\")",
    "would_skip_existing": "different (left as they are: existing = \"skip\")",
}


def _ending_lines(report: dict[str, Any]) -> list[str]:
    """What a person must do next: stopped streams, dead letters to look at."""
    lines = []
    run = report.get("run", {})
    for name, reason in run.get("stopped_streams", {}).items():
        lines.append(f"stream {name} stopped: {reason}")
    dead = report["totals"]["dead_lettered"]
    ledger = run.get("ledger")
    if dead and ledger and "dry_run" not in report:
        lines.append(
            f"dead letters: {dead} record{'s' * (dead != 1)} not carried; see why with: migrator dlq list {shlex.quote(ledger)}"
        )
    return lines


VERIFY_SHOWN = 5  # differences of each kind per stream printed; the JSON report holds the rest


def verify_summary(result: dict[str, Any], full_list: str | None = None) -> str:
    """Verify's outcome for a person: counts per stream, the first few differences of each kind
    (missing keys, extra keys, fields with both values) and `full_list`: where the rest is."""
    lines = ["verify: " + ("OK, target matches source" if result["ok"] else "DIFFERENCES between source and target")]
    for name, s in result["streams"].items():
        if "note" in s and "expected" not in s:
            lines.append(f"  {name}: {s['note']}")
            continue
        lines.append(
            f"  {name}: expected {s['expected']}, in target {s['actual']}, missing {s['missing']},"
            f" extra {s['extra']}, field mismatches {s['mismatched']}"
        )
        for label, keys, total in (
            ("missing from the target", s.get("missing_samples", []), s["missing"]),
            ("in the target, not in the source", s.get("extra_samples", []), s["extra"]),
        ):
            if keys:
                lines.append(f"    {label}: {', '.join(map(str, keys[:VERIFY_SHOWN]))}{_more(total, VERIFY_SHOWN)}")
        mismatches = s.get("mismatch_samples", [])
        for sample in mismatches[:VERIFY_SHOWN]:
            fields = "; ".join(
                f"{field} expected {_shown(v['expected'])}, target has {_shown(v['actual'])}"
                for field, v in sample["fields"].items()
            )
            lines.append(f"    differs {sample['key']}: {fields}")
        if mismatches and s["mismatched"] > VERIFY_SHOWN:
            lines.append(f"    ... and {s['mismatched'] - VERIFY_SHOWN} more records with field mismatches")
    if not result["ok"] and full_list:
        lines.append(full_list)
    return "\n".join(lines)


def _more(total: int, shown: int) -> str:
    return f" (and {total - shown} more)" if total > shown else ""


def _shown(value: Any) -> str:
    """A field value as JSON (strings quoted, null for absent), cut short when long."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."
