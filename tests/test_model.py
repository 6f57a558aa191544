"""The canonical catalogue: native-shaped payloads decode into it, datetimes are always aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from migrator import errors, model
from migrator.dates import aware, parse_iso, try_parse_iso
from migrator.model import (
    PARENTS,
    Activity,
    Attempt,
    AttemptStatus,
    Course,
    CourseKind,
    Enrollment,
    EnrollmentStatus,
    Event,
    Journal,
    JournalStatus,
    Organization,
    Parent,
    Session,
    SessionKind,
    parents_of,
)


def test_organization_decodes_from_a_nexport_organization() -> None:
    org = msgspec.convert({"source_id": "org-7", "name": "Field Ops", "parent_id": "org-1", "external_id": "FO"},
                          type=Organization)
    assert (org.source_id, org.name, org.parent_id, org.external_id, org.active) == ("org-7", "Field Ops", "org-1", "FO", True)


@pytest.mark.parametrize("kind", ["course", "lesson", "syllabus", "certification"])
def test_course_kinds_decode(kind: str) -> None:
    course = msgspec.convert({"source_id": "c1", "name": "Working at heights", "kind": kind,
                              "modified_at": "2024-03-02T15:04:06Z"}, type=Course)
    assert course.kind is CourseKind(kind)
    assert course.modified_at == datetime(2024, 3, 2, 15, 4, 6, tzinfo=UTC)


def test_unknown_course_kind_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'module' - at `\$.kind`"):
        msgspec.convert({"source_id": "c1", "name": "x", "kind": "module"}, type=Course)


def test_enrollment_decodes_with_dates_score_credits_and_time() -> None:
    native = {  # an Absorb course enrollment, after the connector renamed its fields
        "source_id": "e-1", "user_id": "u-1", "course_id": "c-1", "status": "completed",
        "enrolled_at": "2024-01-10T09:00:00Z", "started_at": "2024-01-11T09:00:00+10:00",
        "completed_at": "2024-03-02T15:04:05.250Z", "score": 87.5, "credits": 2.0,
        "time_spent_seconds": 5400, "progress": 100,
    }
    enrollment = msgspec.convert(native, type=Enrollment)
    assert enrollment.status is EnrollmentStatus.COMPLETED
    assert enrollment.started_at == datetime(2024, 1, 10, 23, 0, tzinfo=UTC)
    assert enrollment.started_at.utcoffset() == timedelta(hours=10)
    assert enrollment.completed_at == datetime(2024, 3, 2, 15, 4, 5, 250000, tzinfo=UTC)
    assert (enrollment.score, enrollment.credits, enrollment.time_spent_seconds) == (87.5, 2.0, 5400)
    assert enrollment.expires_at is None


@pytest.mark.parametrize("status", ["not_started", "in_progress", "completed", "failed", "withdrawn", "expired"])
def test_every_enrollment_status_maps_to_the_enum(status: str) -> None:
    enrollment = msgspec.convert({"source_id": "e", "user_id": "u", "course_id": "c", "status": status}, type=Enrollment)
    assert enrollment.status is EnrollmentStatus(status)
    assert msgspec.to_builtins(enrollment)["status"] == status


def test_a_native_status_word_is_not_a_canonical_status() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'Complete' - at `\$.status`"):
        msgspec.convert({"source_id": "e", "user_id": "u", "course_id": "c", "status": "Complete"}, type=Enrollment)


def test_attempt_decodes_from_an_absorb_attempt() -> None:
    attempt = msgspec.convert({"source_id": "a-9", "user_id": "u-1", "course_id": "l-3", "enrollment_id": "le-4",
                               "status": "failed", "score": 40, "started_at": "2024-02-01T08:00:00Z",
                               "completed_at": "2024-02-01T08:20:00Z"}, type=Attempt)
    assert attempt.status is AttemptStatus.FAILED
    assert attempt.completed_at - attempt.started_at == timedelta(minutes=20)
    assert attempt.score == 40.0


def test_activity_decodes_from_a_civica_activity_row() -> None:
    activity = msgspec.convert({"source_id": "jo|FIRE-1|completed|2024-05-01T10:00:00Z", "user_id": "jo",
                                "course_id": "FIRE-1", "title": "Fire safety", "kind": "course", "status": "completed",
                                "occurred_at": "2024-05-01T10:00:00Z", "recorded_at": "2024-05-01T10:00:03Z",
                                "score": None, "cpd_points": 1.5, "learning_hours": 0.75}, type=Activity)
    assert activity.status is EnrollmentStatus.COMPLETED
    assert activity.occurred_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert (activity.cpd_points, activity.learning_hours, activity.score) == (1.5, 0.75, None)


def test_session_decodes_with_start_end_location_and_capacity() -> None:
    session = msgspec.convert({"source_id": "s-1", "course_id": "c-ilt", "kind": "ilc", "name": "Morning",
                               "starts_at": "2024-06-03T09:00:00+01:00", "ends_at": "2024-06-03T12:00:00+01:00",
                               "location": "Teams", "capacity": 12}, type=Session)
    assert session.kind is SessionKind.ILC
    assert session.ends_at - session.starts_at == timedelta(hours=3)
    assert (session.location, session.capacity) == ("Teams", 12)


def test_session_without_an_end_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Object missing required field `ends_at`"):
        msgspec.convert({"source_id": "s", "course_id": "c", "starts_at": "2024-06-03T09:00:00Z"}, type=Session)


def test_journal_decodes_from_a_civica_journal() -> None:
    journal = msgspec.convert({"source_id": "j-1", "user_id": "jo", "starts_at": "2024-01-01T00:00:00Z",
                               "ends_at": "2024-12-31T23:59:59Z", "status": "year_break", "target": 20,
                               "target_mode": "points"}, type=Journal)
    assert journal.status is JournalStatus.YEAR_BREAK
    assert (journal.target, journal.submitted_at) == (20.0, None)


def test_event_decodes_from_a_learning_hub_event() -> None:
    event = msgspec.convert({"source_id": "FOO-1", "actor_id": "jo@example.org", "type": "CourseCompletion",
                             "object_id": "FIRE-1", "occurred_at": "2024-05-01T10:00:00Z",
                             "data": {"score": 90, "passed": True}}, type=Event)
    assert (event.actor_id, event.type, event.object_id) == ("jo@example.org", "CourseCompletion", "FIRE-1")
    assert event.occurred_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert event.data == {"score": 90, "passed": True}


@pytest.mark.parametrize(("record_type", "payload", "field"), [
    (Enrollment, {"source_id": "e", "user_id": "u", "course_id": "c", "completed_at": "2024-03-02T15:04:05"},
     "completed_at"),
    (Session, {"source_id": "s", "course_id": "c", "starts_at": "2024-06-03T09:00:00", "ends_at": "2024-06-03T10:00:00Z"},
     "starts_at"),
    (Event, {"source_id": "FOO-1", "actor_id": "a", "type": "t", "occurred_at": "2024-05-01 10:00:00"}, "occurred_at"),
])
def test_a_naive_datetime_is_refused(record_type: type, payload: dict, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"Expected `datetime` with a timezone component - at `\$.{field}`"):
        msgspec.convert(payload, type=record_type)


def test_a_naive_datetime_object_is_refused_too() -> None:
    with pytest.raises(msgspec.ValidationError, match="timezone component"):
        msgspec.convert({"source_id": "e", "user_id": "u", "course_id": "c", "enrolled_at": datetime(2024, 1, 1)},
                        type=Enrollment)


def test_aware_declares_naive_values_utc_and_keeps_aware_ones() -> None:
    assert aware("2024-03-02T15:04:05") == datetime(2024, 3, 2, 15, 4, 5, tzinfo=UTC)
    assert aware(datetime(2024, 3, 2, 15, 4, 5)).tzinfo is UTC
    plus_ten = datetime(2024, 3, 2, 15, 4, 5, tzinfo=timezone(timedelta(hours=10)))
    assert aware(plus_ten) is plus_ten
    enrollment = msgspec.convert({"source_id": "e", "user_id": "u", "course_id": "c",
                                  "completed_at": aware("2024-03-02 15:04:05")}, type=Enrollment)
    assert enrollment.completed_at == datetime(2024, 3, 2, 15, 4, 5, tzinfo=UTC)


def test_aware_refuses_text_that_is_not_a_date() -> None:
    with pytest.raises(errors.RecordError, match="^date 'yesterday' is not an ISO-8601 date$") as caught:
        aware("yesterday")
    assert caught.value.error_class == "invalid_value"


@pytest.mark.parametrize("text", ["2024-03-02T15:04:05Z", "2024-03-02T15:04:05+0000", "2024-03-02 15:04:05",
                                  "2024-03-02T17:04:05+02:00", "2024-03-02T15:04:05.000Z"])
def test_one_iso_reader_for_every_spelling(text: str) -> None:
    expected = datetime(2024, 3, 2, 15, 4, 5, tzinfo=UTC)
    assert parse_iso(text, "when") == expected
    assert try_parse_iso(text) == expected


@pytest.mark.parametrize("value", [None, "", "soon", 1700000000])
def test_the_lenient_reader_answers_none_for_non_dates(value: object) -> None:
    assert try_parse_iso(value) is None


def test_every_record_type_declares_its_parents_once() -> None:
    record_types = {value for value in vars(model).values()
                    if isinstance(value, type) and issubclass(value, msgspec.Struct) and value is not Parent}
    assert set(PARENTS) == record_types
    for record_type, parents in PARENTS.items():
        fields = set(record_type.__struct_fields__)
        assert {parent.field for parent in parents} <= fields, record_type
    assert parents_of(Enrollment) == (Parent("user_id", "users"), Parent("course_id", "courses"),
                                      Parent("session_id", "sessions"))


def test_record_error_and_skip_are_importable_from_both_places() -> None:
    from migrator.errors import RecordError as FromErrors
    from migrator.errors import Skip as SkipFromErrors
    from migrator.model import RecordError, Skip

    assert RecordError is FromErrors and Skip is SkipFromErrors
    with pytest.raises(FromErrors) as caught:
        raise RecordError("conflict", "username 'jo' is taken", status=409)
    assert (caught.value.error_class, caught.value.message, caught.value.status) == ("conflict", "username 'jo' is taken", 409)
    assert Skip("exists", target_id="42").target_id == "42"
