"""Dead letters you can act on: list them grouped, and re-drive them after a fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from migrator.ledger import IN_FLIGHT, PENDING, Ledger

# a failure after the request may have left (timeout, reset, 5xx): look up before resending
AMBIGUOUS = {"transport_error", "server_error", "unknown_outcome"}
_NUMBER = re.compile(r"\b\d+\b")
_QUOTED = re.compile(r"'[^']*'")


def message_shape(message: str) -> str:
    """Messages that differ only in ids and quoted values belong to one group."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", message))


def list_groups(path: str | Path, samples: int = 3) -> list[dict[str, Any]]:
    if not Path(path).exists():
        raise FileNotFoundError(path)
    ledger = Ledger(path)
    try:
        return groups(ledger, samples)
    finally:
        ledger.close(commit=False)


def groups(ledger: Ledger, samples: int = 3) -> list[dict[str, Any]]:
    """Dead letters grouped by stream, class and message shape, biggest group first."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for dead in ledger.dead_letters():
        key = (dead.stream, dead.error_class, message_shape(dead.message))
        group = found.setdefault(
            key,
            {"stream": dead.stream, "error_class": dead.error_class, "message": key[2], "count": 0,
             "statuses": set(), "samples": []},
        )
        group["count"] += 1
        if dead.status is not None:
            group["statuses"].add(dead.status)
        if len(group["samples"]) < samples:
            group["samples"].append({"source_id": dead.source_id, "message": dead.message})
    out = sorted(found.values(), key=lambda g: (-g["count"], g["stream"], g["error_class"]))
    for group in out:
        group["statuses"] = sorted(group["statuses"])
    return out


def reopen(ledger: Ledger, streams: set[str] | None, classes: set[str] | None) -> dict[str, int]:
    """Make matching dead letters pending again (in flight where the outcome was unknown) and
    rewind their streams, so the next resumed run reads them again through the current mapping."""
    reopened: dict[str, int] = {}
    for dead in list(ledger.dead_letters()):
        if (streams and dead.stream not in streams) or (classes and dead.error_class not in classes):
            continue
        ledger.reopen_dead(dead.stream, dead.source_id, IN_FLIGHT if dead.error_class in AMBIGUOUS else PENDING)
        reopened[dead.stream] = reopened.get(dead.stream, 0) + 1
    for stream in reopened:
        ledger.rewind(stream)  # every partition: a dead letter's partition is not recorded
    ledger.commit()
    return reopened


def render(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "no dead letters"
    lines = [f"{'count':>7}  {'stream':<13} {'class':<22} message"]
    for g in groups:
        status = f" [HTTP {', '.join(map(str, g['statuses']))}]" if g["statuses"] else ""
        lines.append(f"{g['count']:>7}  {g['stream']:<13} {g['error_class']:<22} {g['message']}{status}")
        for sample in g["samples"]:
            lines.append(f"{'':>9}e.g. {sample['source_id']}: {sample['message'][:160]}")
    return "\n".join(lines)
