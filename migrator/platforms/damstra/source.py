"""Reading a Damstra Learning tenant: groups, users (all states) and completed lesson schedules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import msgspec

from migrator import paging
from migrator.connectors import Loss, Page, SourceStream, segment
from migrator.http import HostClient, HostLimits, RequestStats
from migrator.model import Certificate, Group, RecordError, User
from migrator.paging import Anchored, Ask, Fetch, Offset, PagingError
from migrator.platforms.damstra.config import DamstraSource
from migrator.platforms.damstra.schema import (
    ACTIVE,
    NOT_CURRENT,
    DamstraGroup,
    DamstraUser,
    Envelope,
    LessonScheduleItem,
)


def _convert(native: Any, kind: type) -> Any:
    try:
        return msgspec.convert(native, kind)
    except msgspec.ValidationError as exc:
        raise RecordError("malformed_record", f"{kind.__name__}: {exc}") from None


def _text(value: str | None) -> str | None:
    return value if value not in (None, "") else None


ALL_USERS = Ask({"activeValue": "all"})  # activeValue defaults to "active": a full export must ask for all
COMPLETED = Ask({"status": "completed"})
SCHEDULE_PAGE = 100


def _offsets(page_size: int, total: str | None = "meta.totalResultCount") -> Offset:
    """Damstra's paging: `startIndex` (a row offset) and `maxResults`, rows under `results`."""
    return Offset(offset_param="startIndex", limit_param="maxResults", limit=page_size, rows="results", total=total)


def _listing(page_size: int) -> Anchored:
    # offset paging over a tenant that changes while we read: overlap and anchor (migrator.paging)
    return Anchored(_offsets(page_size))


def _getter(client: HostClient, path: str, stats: RequestStats) -> Fetch:
    """GET `path` with the paginator's parameters; a page that is not Damstra's envelope fails loudly."""

    async def fetch(ask: Ask) -> Any:
        body = await client.request_json("GET", path, params=ask.params, stats=stats)
        try:
            msgspec.convert(body, Envelope)
        except msgspec.ValidationError as exc:
            # a broken page is not one record's fault: fail loudly, the cursor keeps us resumable
            raise PagingError(f"Damstra GET {path} returned an unexpected page: {exc}") from None
        return body

    return fetch


def _rows(page: paging.Page) -> list[tuple[str, Any]]:
    return [(str(r.get("id")), r) for r in page.rows]


class DamstraGroups(SourceStream):
    name = "groups"

    def __init__(self, client: HostClient, cfg: DamstraSource):
        self.client, self.listing = client, _listing(cfg.page_size)

    async def pages(self, cursor: str | None, stats: RequestStats) -> AsyncIterator[Page]:
        async for page in self.listing.pages(_getter(self.client, "/group", stats), cursor):
            yield Page(_rows(page), page.cursor, page.total)

    def decode(self, native: Any) -> Group:
        g = _convert(native, DamstraGroup)
        return Group(
            source_id=str(g.id),
            name=g.name,
            description=_text(g.description),
            parent_id=None if g.parentId is None else str(g.parentId),
        )


# Native fields the canonical model has no place for. losses() runs once per record on the hot
# path, so the answers are built once and shared.
NO_LOSS: tuple[Loss, ...] = ()
ROLES_LOSS = Loss("roles", "Damstra roles (trainee, supervisor, admin, ...) are not carried; set them in the target")
SUPERVISED_LOSS = Loss(
    "groupsSupervised", "the groups a user supervises are not carried (memberships are); set supervisors in the target"
)
USER_LOSSES: dict[tuple[bool, bool], tuple[Loss, ...]] = {
    (False, False): NO_LOSS,
    (True, False): (ROLES_LOSS,),
    (False, True): (SUPERVISED_LOSS,),
    (True, True): (ROLES_LOSS, SUPERVISED_LOSS),
}
COMPLETED_BY_LOSS = Loss(
    "lessonCompletedBy", "completed on the trainee's behalf by another user; who recorded it is not carried"
)
STATUS_NAMES = {ACTIVE: "Active", NOT_CURRENT: "Not Current"}


class DamstraUsers(SourceStream):
    name = "users"

    def __init__(self, client: HostClient, cfg: DamstraSource):
        self.client, self.listing = client, _listing(cfg.page_size)
        self.unknown_status = cfg.unknown_status

    async def pages(self, cursor: str | None, stats: RequestStats) -> AsyncIterator[Page]:
        async for page in self.listing.pages(_getter(self.client, "/user", stats), cursor, ALL_USERS):
            yield Page(_rows(page), page.cursor, page.total)

    def _active(self, u: DamstraUser) -> bool:
        status = u.clientStatusId
        if status is None:
            return u.active is not False  # no status: the `active` flag (the doc's example carries both)
        if status in STATUS_NAMES:
            return status != NOT_CURRENT
        if self.unknown_status == "dead_letter":
            documented = ", ".join(f"{code} {name}" for code, name in STATUS_NAMES.items())
            raise RecordError(
                "unknown_value",
                f"clientStatusId {status} is not a status Damstra documents ({documented}); set"
                ' source.unknown_status = "active" or "inactive" to carry such users',
            )
        return self.unknown_status == "active"

    def decode(self, native: Any) -> User:
        u = _convert(native, DamstraUser)
        if not _text(u.userName):
            raise RecordError("missing_field", "userName is empty: the user has no login name to carry")
        return User(
            source_id=str(u.id),
            username=u.userName or "",
            first_name=_text(u.firstName) or "",
            last_name=_text(u.lastName) or "",
            email=_text(u.emailAddress),
            employee_number=_text(u.employeeNumber),
            phone=_text(u.phoneNumber),
            mobile=_text(u.mobileNumber),
            timezone=_text(u.timeZone),
            active=self._active(u),
            group_ids=[str(g.id) for g in u.groups or []],
        )

    def losses(self, native: Any) -> Sequence[Loss]:
        return USER_LOSSES[(bool(native.get("roles")), bool(native.get("groupsSupervised")))]


class DamstraCompletions(SourceStream):
    """Completed lesson schedules, read user by user; a page is one page of users' schedules.

    The cursor is the user listing's offset, so it only moves once every schedule of those users
    is settled.
    """

    name = "certificates"

    def __init__(self, client: HostClient, cfg: DamstraSource):
        self.client = client
        self.users = _listing(cfg.page_size)
        # S2 pages like the other listings but reports no total: it ends on an empty page, since a
        # short one may only be the server's page cap
        self.schedules = _offsets(SCHEDULE_PAGE, total=None)
        self.fetchers = cfg.schedule_fetchers

    async def _schedules(self, user_id: Any, stats: RequestStats, out: list[tuple[str, Any]]) -> None:
        path = f"/user/{segment(user_id)}/lesson_schedule"

        async def fetch(ask: Ask) -> Any:
            return await self.client.request_json("GET", path, params=ask.params, stats=stats)

        async for page in self.schedules.pages(fetch, None, COMPLETED):
            out.extend(_rows(page))

    async def _fetch_gated(
        self, gate: anyio.Semaphore, user_id: Any, stats: RequestStats, out: list[tuple[str, Any]]
    ) -> None:
        async with gate:
            await self._schedules(user_id, stats, out)

    async def pages(self, cursor: str | None, stats: RequestStats) -> AsyncIterator[Page]:
        async for users in self.users.pages(_getter(self.client, "/user", stats), cursor, ALL_USERS):
            found: list[tuple[str, Any]] = []
            gate = anyio.Semaphore(self.fetchers)

            async with anyio.create_task_group() as tg:
                for user in users.rows:
                    if isinstance(user.get("id"), int):
                        tg.start_soon(self._fetch_gated, gate, user["id"], stats, found)
            found.sort(key=lambda pair: pair[0])
            yield Page(found, users.cursor, None)

    def losses(self, native: Any) -> Sequence[Loss]:
        by = native.get("lessonCompletedBy")
        return NO_LOSS if by is None or by == native.get("userId") else (COMPLETED_BY_LOSS,)

    def decode(self, native: Any) -> Certificate:
        s = _convert(native, LessonScheduleItem)
        if not s.lessonCompletedDate:
            raise RecordError("missing_field", f"lessonCompletedDate is empty on completed schedule {s.id}")
        return Certificate(
            source_id=str(s.id),
            user_id=str(s.userId),
            course_id=str(s.lessonId),
            course_name=s.lessonName,
            awarded_at=s.lessonCompletedDate,
        )


STREAMS = {"groups": DamstraGroups, "users": DamstraUsers, "certificates": DamstraCompletions}


def open_client(cfg: DamstraSource, secrets: list[str]) -> HostClient:
    return HostClient(
        cfg.base_url,
        limits=cfg.limits or HostLimits(),
        headers={"AccessKey": cfg.access_key, "Content-Type": "application/json"},
        secrets=secrets,
        name="damstra",
    )
