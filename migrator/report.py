"""The run report: counts from the ledger (the whole migration), requests and time from this run."""

from __future__ import annotations

from typing import Any

import orjson

from migrator.http import RequestStats
from migrator.ledger import DEAD, IN_FLIGHT, PENDING, SKIPPED, WRITTEN, Ledger

KEYS = ("read", "written", "skipped", "dead_lettered", "pending", "retried", "requests", "rate_limited")


def _host_rate(client: Any) -> float | None:
    return getattr(client, "current_rate", None)


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
        for (field, reason), n in sorted(runner.stats.losses.items()):
            losses.append({"stream": runner.name, "field": field, "reason": reason, "records": n})
    totals["requests"] += setup.requests
    settled = sum(r.stats.settled for r in runners)
    totals["records_per_second"] = round(settled / seconds, 1) if seconds else 0.0
    report: dict[str, Any] = {
        "run": {"mode": "dry-run" if dry_run else "run", "ledger": None if dry_run else str(plan.ledger_path)},
        "streams": streams,
        "totals": totals,
        "fidelity_losses": losses,
    }
    if dry_run:
        report["dry_run"] = _estimate(report, plan)
    return report


def _estimate(report: dict[str, Any], plan: Any) -> dict[str, Any]:
    """Requests and time the real run needs at the configured limits (reads counted as seen now)."""
    streams = report["streams"]
    writes = sum(s["dry_run"]["estimated_write_requests"] for s in streams.values())
    reads = report["totals"]["requests"]
    source_rate, target_rate = plan.source.limits.rate, plan.target.limits.rate
    est: dict[str, Any] = {
        "would_create": sum(s["dry_run"].get("would_create", 0) for s in streams.values()),
        "would_update": sum(s["dry_run"].get("would_update", 0) for s in streams.values()),
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
        d = report["dry_run"]
        lines.append(
            f"dry run: would create {d['would_create']}, update {d['would_update']}, skip {d['would_skip']},"
            f" reject {d['would_reject']}; {d['target_requests']} target requests"
            + (f" ≈ {d['target_seconds_at_limit']} s at the configured rate" if "target_seconds_at_limit" in d else "")
        )
    if "verify" in report:
        lines.append(verify_summary(report["verify"]))
    return "\n".join(lines)


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
