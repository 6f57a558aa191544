"""One reading of the many ISO-8601 spellings LMS APIs use, and one way of writing them.

Canonical records hold timezone-aware datetimes only (:data:`AwareDatetime`): a naive value is
ambiguous, so decoding refuses it, and a connector that knows its platform means UTC says so with
:func:`aware` before building the record.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from migrator.errors import RecordError

__all__ = ["AwareDatetime", "aware", "format_utc", "normalize", "parse_iso", "plus", "try_parse_iso"]

# A datetime field of a canonical record: msgspec decodes ISO strings and refuses naive ones.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

_OFFSET_NO_COLON = re.compile(r"([+-]\d{2})(\d{2})$")


def parse_iso(value: str, field: str) -> datetime:
    """Any ISO-8601 spelling (Z, +00:00, +0000, space for T; naive means UTC), as an aware UTC datetime."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    text = _OFFSET_NO_COLON.sub(r"\1:\2", text)  # "+0000" → "+00:00"
    text = text.replace(" ", "T", 1) if "T" not in text else text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError("invalid_value", f"{field} '{value}' is not an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def try_parse_iso(value: Any) -> datetime | None:
    """:func:`parse_iso` for request parameters (the simulators): None for anything that is not a date."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso(value, "date")
    except RecordError:
        return None


def aware(value: datetime | str) -> datetime:
    """Declare a platform's naive timestamp (datetime or ISO string) as UTC; aware ones are kept as given."""
    moment = parse_iso(value, "date") if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def format_utc(moment: datetime) -> str:
    """YYYY-MM-DDTHH:MM:SS.sssZ, the form Civica emits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def normalize(value: str, field: str) -> str:
    return format_utc(parse_iso(value, field))


def plus(value: str, seconds: float) -> str:
    return format_utc(parse_iso(value, "date") + timedelta(seconds=seconds))
