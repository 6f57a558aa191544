"""Damstra Learning (formerly Velpic) REST API v2: the native records we read."""

from __future__ import annotations

import msgspec


class IdRef(msgspec.Struct):
    id: int


class DamstraUser(msgspec.Struct, kw_only=True):
    id: int
    userName: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    emailAddress: str | None = None
    phoneNumber: str | None = None
    mobileNumber: str | None = None
    employeeNumber: str | None = None
    clientStatusId: int | None = None
    active: bool | None = None
    groups: list[IdRef] | None = None
    timeZone: str | None = None


class DamstraGroup(msgspec.Struct, kw_only=True):
    id: int
    name: str
    description: str | None = None
    parentId: int | None = None


class LessonScheduleItem(msgspec.Struct, kw_only=True):
    id: int
    userId: int
    lessonId: int
    lessonName: str | None = None
    status: str | None = None
    lessonCompletedDate: str | None = None


class Meta(msgspec.Struct):
    totalResultCount: int
    startIndex: int
    endIndex: int


class Envelope(msgspec.Struct):
    results: list[dict]
    meta: Meta | None = None


ACTIVE, NOT_CURRENT = 56, 57
