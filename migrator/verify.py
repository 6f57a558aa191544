"""Verify: the source, passed through the mapping, against what the target actually holds.

Both sides are streamed into a scratch SQLite file and compared there, so memory stays flat
however many records there are.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import orjson

from mappings import mapping_for
from migrator.api import selected_streams
from migrator.connectors import TargetStream, exportable
from migrator.http import RequestStats
from migrator.model import RecordError, Skip
from migrator.plan import Plan
from migrator.platforms.registry import open_source, open_target

SAMPLES = 20


async def verify(plan: Plan, *, samples: int | None = SAMPLES) -> dict[str, Any]:
    """Compare; each stream lists up to `samples` missing keys, extra keys and mismatches (None: all)."""
    mapping = mapping_for(plan.source.platform, plan.target.platform, plan.mapping)
    streams = selected_streams(plan, mapping)
    secrets = plan.secrets()
    source, target = open_source(plan.source, secrets), open_target(plan.target, secrets)
    stats = RequestStats()
    with tempfile.TemporaryDirectory(prefix="migrator-verify-") as tmp:
        db = sqlite3.connect(Path(tmp) / "verify.sqlite")
        db.executescript(
            "CREATE TABLE keys (stream TEXT, source_id TEXT, key TEXT, PRIMARY KEY (stream, source_id));"
            "CREATE TABLE seen (stream TEXT, source_id TEXT, PRIMARY KEY (stream, source_id));"
            "CREATE INDEX keys_by_key ON keys (stream, key);"
            "CREATE TABLE expected (stream TEXT, key TEXT, fields BLOB);"
            "CREATE TABLE actual (stream TEXT, key TEXT, fields BLOB);"
            "CREATE INDEX e ON expected (stream, key); CREATE INDEX a ON actual (stream, key);"
        )
        excluded: dict[str, dict[str, int]] = {}
        async with source.client, target.client:
            await target.prepare(stats)
            for name in streams:  # parents come first in mapping order
                tstream = target.streams[name]
                async for page in source.streams[name].pages(None, stats):
                    for sid, native in page.records:
                        if db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (name, sid)).rowcount == 0:
                            continue  # offset paging repeats records on purpose
                        why = None
                        try:
                            mapped = mapping.map(name, source.streams[name].decode(native))
                            parents = {}
                            for dep in mapped.deps:
                                row = db.execute(
                                    "SELECT key FROM keys WHERE stream = ? AND source_id = ?", dep
                                ).fetchone()
                                if row is None:
                                    raise RecordError("missing_dependency", "")
                                parents[dep] = row[0]
                            encoded = tstream.encode(mapped.record, parents)
                            taken = "SELECT 1 FROM keys WHERE stream = ? AND key = ?"
                            if db.execute(taken, (name, encoded.key)).fetchone():
                                raise RecordError("duplicate_natural_key", "")
                        except Skip:
                            why = "skipped"
                        except RecordError as err:
                            why = err.error_class
                        if why:
                            excluded.setdefault(name, {}).setdefault(why, 0)
                            excluded[name][why] += 1
                            continue
                        db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?, ?)", (name, sid, encoded.key))
                        db.execute(
                            "INSERT INTO expected VALUES (?, ?, ?)",
                            (name, encoded.key, orjson.dumps(tstream.carried(encoded), option=orjson.OPT_SORT_KEYS)),
                        )
                if exportable(tstream):
                    async for key, fields in tstream.export(stats):
                        db.execute(
                            "INSERT INTO actual VALUES (?, ?, ?)",
                            (name, key, orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)),
                        )
        result: dict[str, Any] = {"ok": True, "streams": {}, "requests": stats.requests}
        for name in streams:
            result["streams"][name] = entry = _compare(
                db, name, target.streams[name], excluded.get(name, {}), samples
            )
            if entry.get("missing") or entry.get("extra") or entry.get("mismatched"):
                result["ok"] = False
        db.close()
    return result


def _compare(
    db: sqlite3.Connection, name: str, tstream: TargetStream, excluded: dict[str, int], samples: int | None
) -> dict[str, Any]:
    note = getattr(tstream, "verify_note", None)
    entry: dict[str, Any] = {"excluded_by_mapping": excluded}
    if note:
        entry["note"] = note
    if not exportable(tstream):
        return entry
    counts = """
        WITH e AS (SELECT key, count(*) n FROM expected WHERE stream = :s GROUP BY key),
             a AS (SELECT key, count(*) n FROM actual WHERE stream = :s GROUP BY key)
    """
    entry["expected"] = db.execute("SELECT count(*) FROM expected WHERE stream = ?", (name,)).fetchone()[0]
    entry["actual"] = db.execute("SELECT count(*) FROM actual WHERE stream = ?", (name,)).fetchone()[0]
    missing = db.execute(
        counts + "SELECT e.key, e.n - coalesce(a.n, 0) FROM e LEFT JOIN a USING (key) WHERE e.n > coalesce(a.n, 0)",
        {"s": name},
    ).fetchall()
    extra = db.execute(
        counts + "SELECT a.key, a.n - coalesce(e.n, 0) FROM a LEFT JOIN e USING (key) WHERE a.n > coalesce(e.n, 0)",
        {"s": name},
    ).fetchall()
    entry["missing"] = sum(n for _, n in missing)
    entry["extra"] = sum(n for _, n in extra)
    entry["missing_samples"] = [k for k, _ in missing[:samples]]
    entry["extra_samples"] = [k for k, _ in extra[:samples]]
    mismatched, shown = 0, []
    rows = db.execute(
        "SELECT e.key, e.fields, a.fields FROM expected e JOIN actual a ON a.stream = e.stream AND a.key = e.key "
        "WHERE e.stream = ? AND e.fields != a.fields",
        (name,),
    )
    for key, want_raw, got_raw in rows:
        want, got = orjson.loads(want_raw), orjson.loads(got_raw)
        fields = sorted(f for f, v in want.items() if got.get(f) != v)
        if fields:
            mismatched += 1
            if samples is None or len(shown) < samples:
                shown.append({"key": key, "fields": {f: {"expected": want[f], "actual": got.get(f)} for f in fields}})
    entry["mismatched"] = mismatched
    entry["mismatch_samples"] = shown
    return entry
