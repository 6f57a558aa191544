"""Canonical records: what every source produces and every target consumes.

Platform connectors translate their native payloads to and from these Structs, so a mapping
between any two platforms is written once against one vocabulary.
"""

from __future__ import annotations

import msgspec


class Group(msgspec.Struct, kw_only=True):
    source_id: str
    name: str
    description: str | None = None
    parent_id: str | None = None


class User(msgspec.Struct, kw_only=True):
    source_id: str
    username: str
    first_name: str
    last_name: str
    email: str | None = None
    employee_number: str | None = None
    phone: str | None = None
    mobile: str | None = None
    timezone: str | None = None
    active: bool = True
    group_ids: list[str] = []


class Certificate(msgspec.Struct, kw_only=True):
    """A completed, certified piece of learning (a Damstra completed lesson schedule, a Civica award)."""

    source_id: str
    user_id: str
    course_id: str
    course_name: str | None = None
    awarded_at: str
    expires_at: str | None = None
    score: float | None = None


class RecordError(Exception):
    """A single record cannot be carried; it goes to the dead-letter store, the run goes on."""

    def __init__(self, error_class: str, message: str, status: int | None = None):
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.status = status


class Skip(Exception):
    """This record is deliberately left behind (recorded as skipped, with the reason): by the mapping,
    or by a target whose record already exists (then `target_id` names it, so children can attach)."""

    def __init__(self, reason: str, target_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.target_id = target_id
