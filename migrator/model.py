"""Canonical records: what every source produces and every target consumes.

Platform connectors translate their native payloads to and from these Structs, so a mapping
between any two platforms is written once against one vocabulary. Every record carries its
``source_id``; references to other records hold *their* source ids. Datetimes on the newer records
are timezone-aware (:data:`migrator.dates.AwareDatetime`): msgspec decodes ISO strings and refuses
naive ones, so a connector whose platform writes naive UTC passes them through
:func:`migrator.dates.aware` first. Which records each record refers to is declared once, in
:data:`PARENTS`.
"""

from __future__ import annotations

import enum

import msgspec

from migrator.dates import AwareDatetime
from migrator.errors import RecordError, Skip  # re-exported: they used to live here

__all__ = [
    "PARENTS", "Activity", "Attempt", "AttemptStatus", "Certificate", "Course", "CourseKind", "Enrollment",
    "EnrollmentStatus", "Event", "Group", "Journal", "JournalStatus", "Organization", "Parent", "RecordError",
    "Session", "SessionKind", "Skip", "User", "parents_of",
]


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


class Organization(msgspec.Struct, kw_only=True):
    """An organisational unit above or beside groups (a NexPort organization, an Absorb department)."""

    source_id: str
    name: str
    parent_id: str | None = None
    external_id: str | None = None
    description: str | None = None
    active: bool = True


class CourseKind(enum.StrEnum):
    COURSE = "course"
    LESSON = "lesson"  # a part of a course (Damstra lesson, Absorb lesson, NexPort section)
    SYLLABUS = "syllabus"  # an ordered set of courses (NexPort syllabus, Absorb curriculum, Civica curriculum)
    CERTIFICATION = "certification"  # what an award certifies (Civica certification ref)


class Course(msgspec.Struct, kw_only=True):
    """A piece of the catalogue; ``parent_id`` is the course a lesson belongs to, or the syllabus of a course."""

    source_id: str
    kind: CourseKind = CourseKind.COURSE
    name: str
    description: str | None = None
    parent_id: str | None = None
    external_id: str | None = None
    active: bool = True
    credits: float | None = None
    valid_for_days: int | None = None  # how long a completion or certification stays valid
    created_at: AwareDatetime | None = None
    modified_at: AwareDatetime | None = None


class EnrollmentStatus(enum.StrEnum):
    """Where a learner stands in a course; every platform's status maps onto one of these."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"  # unenrolled, declined, cancelled
    EXPIRED = "expired"  # completed once, no longer valid


class Enrollment(msgspec.Struct, kw_only=True):
    source_id: str
    user_id: str
    course_id: str
    status: EnrollmentStatus = EnrollmentStatus.NOT_STARTED
    enrolled_at: AwareDatetime | None = None
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    due_at: AwareDatetime | None = None
    score: float | None = None
    credits: float | None = None
    progress: float | None = None  # percent, 0-100
    time_spent_seconds: int | None = None
    session_id: str | None = None  # the ILT/ILC session, for instructor-led courses
    modified_at: AwareDatetime | None = None


class AttemptStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class Attempt(msgspec.Struct, kw_only=True):
    """One try at a lesson or assessment (an Absorb attempt, a Damstra lesson attempt)."""

    source_id: str
    user_id: str
    course_id: str
    enrollment_id: str | None = None
    status: AttemptStatus = AttemptStatus.IN_PROGRESS
    score: float | None = None
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    time_spent_seconds: int | None = None


class Activity(msgspec.Struct, kw_only=True):
    """A learner's activity row (Civica GetUsersActivity): has no id of its own on some platforms,
    so the connector builds ``source_id`` from its natural key (user, course, status, when)."""

    source_id: str
    user_id: str
    course_id: str
    title: str | None = None
    kind: str | None = None  # the platform's activity type, carried as given (course, file, event, cpd_entry ...)
    status: EnrollmentStatus
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime | None = None
    score: float | None = None
    cpd_points: float | None = None
    learning_hours: float | None = None
    session_id: str | None = None


class SessionKind(enum.StrEnum):
    ILT = "ilt"  # instructor-led, in a room
    ILC = "ilc"  # instructor-led, online (virtual classroom)


class Session(msgspec.Struct, kw_only=True):
    """A scheduled instructor-led session of a course."""

    source_id: str
    course_id: str
    kind: SessionKind = SessionKind.ILT
    name: str | None = None
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    location: str | None = None
    capacity: int | None = None
    instructor: str | None = None
    timezone: str | None = None


class JournalStatus(enum.StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    YEAR_BREAK = "year_break"


class Journal(msgspec.Struct, kw_only=True):
    """A learner's CPD journal for one period (Civica SetJournal/GetJournals)."""

    source_id: str
    user_id: str
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    submitted_at: AwareDatetime | None = None
    status: JournalStatus = JournalStatus.PENDING
    target: float | None = None  # points or hours due in the period
    target_mode: str | None = None


class Event(msgspec.Struct, kw_only=True):
    """Something that happened to a learner (a Learning Hub event): who, what kind, about what, when."""

    source_id: str
    actor_id: str  # the user, or the e-mail that identifies them where there is no user entity
    type: str  # verb or event type (CourseCompletion, CertificateAwarded, ...), as the plan maps it
    object_id: str | None = None  # the course, certificate or enrollment it is about
    occurred_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    reference_id: str | None = None  # an earlier event this one refers to
    data: dict[str, object] = {}


class Parent(msgspec.Struct, frozen=True):
    """One reference from a record to another stream: ``field`` holds the parent's source id
    (or a list of them, or None for no parent), and that record is carried by ``stream``."""

    field: str
    stream: str


# Each record type's references, declared once. The engine will read this (it does not yet;
# today's pair still declares its order itself) instead of per-pair declarations: for a stream
# carrying type T, ``parents_of(T)`` gives the streams that must be settled first (stream order),
# and for each record the values of those fields are the source ids to resolve against that
# stream's ledger (or a target lookup) before the record is written; an unresolved value
# dead-letters the record as ``missing_dependency``. A field may hold one id, a list, or None.
# Stream names are the canonical ones; a platform whose stream is named otherwise maps it.
PARENTS: dict[type[msgspec.Struct], tuple[Parent, ...]] = {
    Organization: (Parent("parent_id", "organizations"),),
    Group: (Parent("parent_id", "groups"),),
    User: (Parent("group_ids", "groups"),),
    Course: (Parent("parent_id", "courses"),),
    Session: (Parent("course_id", "courses"),),
    Enrollment: (Parent("user_id", "users"), Parent("course_id", "courses"), Parent("session_id", "sessions")),
    Attempt: (Parent("user_id", "users"), Parent("course_id", "courses"), Parent("enrollment_id", "enrollments")),
    Activity: (Parent("user_id", "users"), Parent("course_id", "courses"), Parent("session_id", "sessions")),
    Journal: (Parent("user_id", "users"),),
    Certificate: (Parent("user_id", "users"), Parent("course_id", "courses")),
    Event: (Parent("actor_id", "users"),),
}


def parents_of(record_type: type[msgspec.Struct]) -> tuple[Parent, ...]:
    """The references ``record_type`` declares; a type not in :data:`PARENTS` is a programming error."""
    return PARENTS[record_type]
