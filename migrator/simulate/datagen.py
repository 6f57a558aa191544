"""Deterministic, lazy data generation shared by the simulators.

Record i of a kind is a pure function of (seed, kind, i), so a million records can be
served page by page without ever being held in memory.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

FIRST_NAMES: tuple[str, ...] = (
    "James", "Olivia", "Liam", "Emma", "Noah", "Ava", "William", "Sophia", "Jack", "Isla",
    "Thomas", "Charlotte", "Lucas", "Amelia", "Henry", "Mia", "Oscar", "Grace", "Leo", "Chloe",
    "Daniel", "Ruby", "Samuel", "Zoe", "Ethan", "Lily", "Matthew", "Ella", "Joshua", "Harper",
    "Aarav", "Priya", "Mohammed", "Fatima", "Wei", "Mei", "Hiroshi", "Yuki", "Tane", "Aroha",
    "Émile", "Søren", "Zoë", "José", "Björn", "Renée", "名", "Łukasz", "Siobhán", "Ngaio",
)
LAST_NAMES: tuple[str, ...] = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Johnson", "White", "Martin", "Anderson",
    "Thompson", "Nguyen", "Thomas", "Walker", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King",
    "Davis", "Wright", "Evans", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Patel",
    "Singh", "Chen", "Wang", "Kumar", "Tanaka", "Sato", "Ngata", "Murphy", "O'Brien", "MacDonald",
    "Dupré", "Øverby", "Müller", "García", "Kowalski", "山名", "Ó Súilleabháin", "Nuñez", "Lindqvist", "Zhang",
)
TIMEZONES: tuple[str, ...] = (
    "Australia/Perth", "Australia/Sydney", "Australia/Brisbane", "Pacific/Auckland", "Europe/London", "UTC",
)
DEPARTMENTS: tuple[str, ...] = (
    "Operations", "Safety", "Maintenance", "Logistics", "Finance", "People", "Sales", "Engineering",
)


def rng(seed: int, kind: str, i: int) -> random.Random:
    """Independent generator per record: the record never depends on its neighbours."""
    return random.Random(f"{seed}:{kind}:{i}")


def mix(seed: int, kind: str, i: int) -> int:
    """Cheap stable 64-bit hash, for decisions that must be computed without a full record."""
    digest = hashlib.blake2b(f"{seed}:{kind}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rand_datetime(r: random.Random, start_year: int, end_year: int) -> datetime:
    """Uniform UTC second in [start_year-01-01, end_year-01-01)."""
    start = datetime(start_year, 1, 1, tzinfo=UTC)
    span = int((datetime(end_year, 1, 1, tzinfo=UTC) - start).total_seconds())
    return start + timedelta(seconds=r.randrange(span))


def fmt_offset(dt: datetime) -> str:
    """``2015-10-29T15:28:59+0000`` (offset without colon)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def fmt_millis_z(dt: datetime) -> str:
    """``2021-03-04T05:06:07.000Z``."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def fmt_space(dt: datetime) -> str:
    """``2015-10-29 15:28:59`` (no zone, UTC implied)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL fixture; blank lines are skipped, anything else must be a JSON object."""
    records: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            records.append(obj)
    return records


class SparseMarks:
    """Exactly one marked index in every block of ``period`` consecutive indices.

    The slot inside each block is hashed, so marks look random yet counting and
    k-th lookups are O(1) arithmetic - filters over a million records stay instant.
    """

    def __init__(self, n: int, seed: int, kind: str, period: int = 10) -> None:
        self.n, self.seed, self.kind, self.period = n, seed, kind, period

    def slot(self, block: int) -> int:
        return mix(self.seed, self.kind, block) % self.period

    def is_marked(self, i: int) -> bool:
        return self.slot(i // self.period) == i % self.period

    def marked_count(self) -> int:
        full, rest = divmod(self.n, self.period)
        return full + (1 if rest and self.slot(full) < rest else 0)

    def marked_view(self) -> MarkedView:
        return MarkedView(self)

    def unmarked_view(self) -> UnmarkedView:
        return UnmarkedView(self)


class MarkedView:
    """The marked indices, ascending, as a lazy sequence."""

    def __init__(self, marks: SparseMarks) -> None:
        self.marks = marks
        self._len = marks.marked_count()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self._len:
            raise IndexError(k)
        return k * self.marks.period + self.marks.slot(k)

    def __iter__(self) -> Iterator[int]:
        return (self[k] for k in range(self._len))


class UnmarkedView:
    """The unmarked indices, ascending, as a lazy sequence."""

    def __init__(self, marks: SparseMarks) -> None:
        self.marks = marks
        self._len = marks.n - marks.marked_count()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self._len:
            raise IndexError(k)
        per = self.marks.period - 1  # unmarked indices per full block
        block, offset = divmod(k, per)
        i = block * self.marks.period + offset
        # Step over the block's marked slot when it sits at or before our position.
        return i + 1 if self.marks.slot(block) <= offset else i

    def __iter__(self) -> Iterator[int]:
        return (self[k] for k in range(self._len))
