"""Damstra Learning → Civica Learning: groups, users with memberships and state, completions as awards.

Field names are settled by the connectors (canonical ↔ native); this mapping decides what travels:
every group, every user (inactive ones are deactivated after creation), and each completed lesson
schedule as a certificate award whose ref comes from the plan's `mapping.certifications` table.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from migrator.connectors import Mapped
from migrator.model import Certificate, Group, RecordError, Skip, User


class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Damstra lesson id → Civica certification ref (certifications must already exist in Civica)
    certifications: dict[str, str] = {}
    # what to do with a completion whose lesson has no certification in the table
    unmapped_lessons: Literal["skip", "dead_letter"] = "skip"
    lowercase_usernames: bool = False


class DamstraToCivica:
    streams = ("groups", "users", "certificates")
    parents = {"groups": (), "users": ("groups",), "certificates": ("users",)}

    def __init__(self, options: Options):
        self.options = options

    def map(self, stream: str, record: Any) -> Mapped:
        if isinstance(record, Group):
            return Mapped(record)
        if isinstance(record, User):
            if self.options.lowercase_usernames:
                record = msgspec.structs.replace(record, username=record.username.lower())
            return Mapped(record, [("groups", gid) for gid in record.group_ids])
        if isinstance(record, Certificate):
            ref = self.options.certifications.get(record.course_id)
            if ref is None:
                why = f"lesson {record.course_id} has no certification in mapping.certifications"
                if self.options.unmapped_lessons == "skip":
                    raise Skip(why)
                raise RecordError("unmapped_value", why)
            return Mapped(msgspec.structs.replace(record, course_id=ref), [("users", record.user_id)])
        raise RecordError("unexpected_record", f"{stream}: no mapping for {type(record).__name__}")


MAPPING = DamstraToCivica

# `migrator demo damstra civica`: the demo source's lessons 101-118 map to the simulator's certifications
DEMO = """[streams.users]
writers = 128                          # SetUser is async: many users wait on their 202 at once

[streams.certificates]
writers = 32

[mapping]
unmapped_lessons = "skip"              # completions of lessons without a certification are skipped

[mapping.certifications]               # Damstra lesson id -> Civica certification ref
""" + "\n".join(f'"{lesson}" = "CERT-{lesson}"' for lesson in range(101, 119)) + "\n"
