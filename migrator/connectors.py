"""What the engine asks of a platform: read pages of a stream, write one record, look one up.

Sources and targets implement these small interfaces; the engine knows nothing else about them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import msgspec

from migrator.http import RequestStats
from migrator.ledger import WriteProgress

Dep = tuple[str, str]  # (stream, source id) of a parent record


def segment(value: object) -> str:
    """A value as ONE percent-encoded path segment: `/`, `?`, `#`, `%`, spaces and dot-only names
    are all encoded, so an id can never reach another route (HostClient sends paths as encoded)."""
    text = quote(str(value), safe="")
    if text.strip(".") == "":
        text = text.replace(".", "%2E")
    return text


class Page(NamedTuple):
    records: list[tuple[str, Any]]  # (source id, native record)
    cursor: str | None  # resume point AFTER this page
    total: int | None = None  # records in the whole stream, when the source says


class Mapped(msgspec.Struct):
    """A canonical record after the mapping, with the parents it needs target ids for."""

    record: Any
    deps: list[Dep] = []


class Loss(NamedTuple):
    field: str
    reason: str


class Encoded(NamedTuple):
    payload: Any  # what the target connector will send (JSON-able)
    key: str  # the natural key in the target: also the target id where the target has no ids
    losses: list[Loss] = []
    requests: int = 1  # requests the write needs, for dry-run estimates
    # values that must already exist in the target, as (kind, value): a dry run checks them
    references: tuple[tuple[str, str], ...] = ()


class Found(str):
    """A target id `write` returns for a record the target held already, identical, before this
    migration (it is ours to settle, but its non-idempotent children may be there too)."""

    __slots__ = ()


class WriteItem(msgspec.Struct, kw_only=True):
    stream: str
    source_id: str
    encoded: Encoded
    progress: WriteProgress | None  # how far an earlier attempt got (e.g. a step and the job id a target answered)
    store_progress: Callable[[WriteProgress | None], Awaitable[None]]  # the engine's: into the ledger
    stats: RequestStats
    # the plan's policy for a record that already existed in the target before this migration:
    # "conflict" (raise RecordError class `conflict`), "update", or "skip" (raise Skip with its target id)
    existing: str = "conflict"

    async def save_progress(self, step: str, job_id: str | None = None, data: dict[str, Any] | None = None) -> None:
        """Remember how far this write got, so a resumed run picks it up there instead of starting over."""
        self.progress = WriteProgress(step, job_id, data or {})
        await self.store_progress(self.progress)


class SourceStream:
    name: str = ""

    async def pages(self, cursor: str | None, stats: RequestStats) -> AsyncIterator[Page]:
        raise NotImplementedError
        yield  # pragma: no cover

    def decode(self, native: Any) -> Any:
        """Native record → canonical Struct; raise RecordError for a malformed record."""
        raise NotImplementedError

    def losses(self, native: Any) -> Sequence[Loss]:
        """Fields of this native record the canonical model does not carry (reported, never silent)."""
        return ()


class TargetStream:
    name: str = ""
    # "upsert": resending is harmless; "lookup": look the record up before resending
    write_safety: str = "upsert"
    # whether the target tells "already exists" apart on write (and so follows the `existing` policy)
    checks_existing: bool = False
    # how the target compares natural keys; where its documentation is silent, False (the safe reading:
    # two keys differing only in case are treated as one, so the second record is refused, not merged)
    keys_case_sensitive: bool = False

    def encode(self, record: Any, parents: dict[Dep, str]) -> Encoded:
        raise NotImplementedError

    def fold_key(self, key: str) -> str:
        """A natural key as the target compares keys (the ledger and duplicate checks use this form)."""
        return key if self.keys_case_sensitive else key.casefold()

    def differences(self, encoded: Encoded, held: dict[str, Any]) -> list[str]:
        """How what the target holds (`held`, as `export` yields it) differs from what writing
        `encoded` would leave there; empty when identical. One rule for the run and the dry run."""
        carried = self.carried(encoded)
        return [f"{k}: {held.get(k)!r} in the target, {v!r} from the source" for k, v in carried.items() if held.get(k) != v]

    def natural_key(self, record: Any) -> str | None:
        """The target key when it follows from the record alone (no parents needed), so that of
        two records with the same key the one read first is the one carried."""
        return None

    async def write(self, item: WriteItem) -> str:
        raise NotImplementedError

    async def reconcile(self, item: WriteItem) -> str | None:
        """An earlier attempt's outcome is unknown: return the target id if it happened, else None."""
        return None

    async def export(self, stats: RequestStats) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Everything the target holds for this stream, as (natural key, carried fields)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def carried(self, encoded: Encoded) -> dict[str, Any]:
        """The fields verify compares, as the target would hold them after writing `encoded`."""
        return {}


def exportable(stream: TargetStream) -> bool:
    """Whether the target can list what it holds for this stream (verify and dry runs need it)."""
    return type(stream).export is not TargetStream.export
