"""One reading of the many ISO-8601 spellings LMS APIs use, and one way of writing them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from migrator.model import RecordError

_OFFSET_NO_COLON = re.compile(r"([+-]\d{2})(\d{2})$")


def parse_iso(value: str, field: str) -> datetime:
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


def format_utc(moment: datetime) -> str:
    """YYYY-MM-DDTHH:MM:SS.sssZ, the form Civica emits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def normalize(value: str, field: str) -> str:
    return format_utc(parse_iso(value, field))


def plus(value: str, seconds: float) -> str:
    return format_utc(parse_iso(value, "date") + timedelta(seconds=seconds))
