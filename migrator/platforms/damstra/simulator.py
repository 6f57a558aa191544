"""Damstra Learning (API v2) simulator: the read side a migration pulls from.

Only the GET routes a source connector needs. Data is either generated lazily from a
seed (millions of users without holding them) or loaded from a JSONL fixture.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from migrator.simulate import datagen as dg
from migrator.simulate.base import SimulatorBase, json_response
from migrator.simulate.faults import FaultSpec

BASE = "/api/v2"
ACTIVE_STATUS, INACTIVE_STATUS = 56, 57
UNKNOWN_STATUS = 99  # a clientStatusId the doc does not define (only with unknown_status_share)
SUPERVISOR_ROLE, TRAINEE_ROLE = 5, 6
SUPERVISORS_PER_MILLE = 30  # generated users who supervise one group (and hold role 5 beside 6)
# Only 94 (completed) is documented; the rest are the digest's invented ids.
SCHEDULE_STATUS_IDS: dict[str, int] = {"scheduled": 90, "due": 91, "overdue": 92, "cancelled": 93, "completed": 94}
SCHEDULE_FILTERS = ("all", *SCHEDULE_STATUS_IDS)
ACTIVE_VALUES = ("active", "inactive", "all")
LESSON_TOPICS = (
    "Manual Handling", "Fire Safety", "Working at Heights", "Confined Spaces", "First Aid",
    "Hazard Awareness", "Site Induction", "Forklift Operation", "Privacy Essentials", "Code of Conduct",
)

ERR_AUTH = {"message": "AccessKey does not exist", "reason": "Invalid access key", "internalCode": 806,
            "error": "Invalid security token"}
ERR_BODIES: dict[int, dict[str, Any]] = {
    429: {"internalCode": 429, "error": "Too Many Requests"},
    500: {"internalCode": 500, "error": "Internal Server Error"},
    502: {"internalCode": 502, "error": "Bad Gateway"},
    503: {"internalCode": 503, "error": "Service Unavailable"},
    504: {"internalCode": 504, "error": "Gateway Timeout"},
}
_EMAIL_RE = re.compile(r"user(\d{7})@example\.org")
_EMP_RE = re.compile(r"E(\d{7})")
_FILTER_CACHE_MAX = 16  # q-filter results kept; each is a compact array of indices


def _bad_request(message: str) -> web.Response:
    return json_response({"message": message, "reason": "Invalid parameter", "internalCode": 400,
                          "error": "Bad Request"}, status=400)


def _not_found(kind: str) -> web.Response:
    # Shape D from the doc (G2), with a real number where the doc printed ``TBD``.
    codes = {"user": 844, "group": 841}
    return json_response({"message": f"No {kind} found for that Id", "reason": f"No {kind.capitalize()} found",
                          "error": True, "internalCode": codes.get(kind, 404), "statusCode": 404}, status=404)


class _GeneratedData:
    """Users, groups, lessons and schedules as pure functions of (seed, index)."""

    def __init__(self, records: int, seed: int, malformed: float, lessons: int, unknown_status: float = 0.0) -> None:
        self.records, self.seed, self.malformed, self.lessons = records, seed, malformed, lessons
        self.unknown_status = unknown_status
        self.group_count = max(3, records // 100)
        self.inactive = dg.SparseMarks(records, seed, "inactive")  # ~10% "Not Current"
        self._members: dict[int, array[int]] | None = None
        self._lessons: dict[int, dict[str, Any]] = {}

    # -- users -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.records

    def view(self, active_value: str) -> Sequence[int]:
        if active_value == "active":
            return self.inactive.unmarked_view()
        if active_value == "inactive":
            return self.inactive.marked_view()
        return range(self.records)

    def in_view(self, i: int, active_value: str) -> bool:
        return active_value == "all" or (active_value == "inactive") == self.inactive.is_marked(i)

    def index_of(self, user_id: int) -> int | None:
        i = user_id - 1000
        return i if 0 <= i < self.records else None

    def names(self, i: int) -> tuple[str, str | None, str]:
        r = dg.rng(self.seed, "user", i)
        first: str | None = r.choice(dg.FIRST_NAMES)
        last = r.choice(dg.LAST_NAMES)
        if r.random() < self.malformed:
            first = None  # a record the target will reject -> dead letter
        return f"user{i:07d}", first, last

    def group_ids(self, i: int) -> list[int]:
        r = dg.rng(self.seed, "ugroups", i)
        k = min(r.randrange(3), self.group_count)
        return sorted(r.sample(range(1, self.group_count + 1), k))

    def supervised(self, i: int) -> list[int]:
        """A few users supervise one group; a hash decides, so role filters need no full record."""
        h = dg.mix(self.seed, "supervisor", i)
        return [(h // 1000) % self.group_count + 1] if h % 1000 < SUPERVISORS_PER_MILLE else []

    def roles(self, i: int) -> list[int]:
        return [SUPERVISOR_ROLE, TRAINEE_ROLE] if self.supervised(i) else [TRAINEE_ROLE]

    def status(self, i: int, active: bool) -> int:
        # off by default: the demo and many tests count dead letters exactly
        if self.unknown_status and dg.mix(self.seed, "status", i) < self.unknown_status * 2**64:
            return UNKNOWN_STATUS
        return ACTIVE_STATUS if active else INACTIVE_STATUS

    def user(self, i: int) -> dict[str, Any]:
        user_name, first, last = self.names(i)
        r = dg.rng(self.seed, "udetail", i)
        active = not self.inactive.is_marked(i)
        supervised = self.supervised(i)
        emp_roll = r.random()
        employee: str | None = f"E{i:07d}" if emp_roll >= 0.1 else ("" if emp_roll < 0.05 else None)
        created = dg.rand_datetime(r, 2015, 2020)
        modified = created + timedelta(seconds=r.randrange(5 * 365 * 86400))
        last_login = modified + timedelta(seconds=r.randrange(365 * 86400)) if r.random() < 0.85 else None
        phone = "" if r.random() < 0.3 else f"08 9{r.randrange(10**3):03d} {r.randrange(10**4):04d}"
        mobile = "" if r.random() < 0.2 else f"04{r.randrange(100):02d} {r.randrange(1000):03d} {r.randrange(1000):03d}"
        return {
            "userName": user_name,
            "firstName": first,
            "lastName": last,
            "emailAddress": f"{user_name}@example.org",
            "mobileNumber": mobile,
            "phoneNumber": phone,
            "lastLoggedInDate": dg.fmt_millis_z(last_login) if last_login else None,
            "active": active,
            "employeeNumber": employee,
            "clientStatusId": self.status(i, active),
            "groups": [{"id": g} for g in self.group_ids(i)],
            "groupsSupervised": [{"id": g} for g in supervised],
            "roles": [SUPERVISOR_ROLE, TRAINEE_ROLE] if supervised else [TRAINEE_ROLE],
            "clientId": 1,
            "timeZone": r.choice(dg.TIMEZONES),
            "id": 1000 + i,
            "createdDate": dg.fmt_offset(created),
            "modifiedDate": dg.fmt_offset(modified),
        }

    def find_exact(self, field: str, value: str) -> list[int]:
        """empId / emailAddress: the value encodes the index, so no scan is needed."""
        pattern = _EMP_RE if field == "employeeNumber" else _EMAIL_RE
        m = pattern.fullmatch(value if field == "employeeNumber" else value.lower())
        if not m or int(m.group(1)) >= self.records:
            return []
        i = int(m.group(1))
        return [i] if self.user(i)[field] == (value if field == "employeeNumber" else f"user{i:07d}@example.org") else []

    def matches_q(self, i: int, q: str) -> bool:
        return any(q in (s or "").lower() for s in self.names(i))

    def has_role(self, i: int, role: int) -> bool:
        return role in self.roles(i)

    # -- groups ----------------------------------------------------------------
    def group_list(self) -> Sequence[int]:
        return range(1, self.group_count + 1)

    def group(self, gid: int) -> dict[str, Any] | None:
        if not 1 <= gid <= self.group_count:
            return None
        r = dg.rng(self.seed, "group", gid)
        dept = dg.DEPARTMENTS[gid % len(dg.DEPARTMENTS)]
        members = self._members.get(gid) if self._members is not None else None
        # Exact once members were scanned; an estimate before, as the brief allows.
        count = len(members) if members is not None else round(self.records / self.group_count)
        return {
            "id": gid,
            "name": f"Team {gid:03d} {dept}",
            "description": f"{dept} team {gid} ({r.choice(dg.TIMEZONES)})",
            "memberCount": count,
            "createdDate": dg.fmt_space(dg.rand_datetime(r, 2015, 2019)),
            "clientId": 1,
        }

    def members(self, gid: int) -> Sequence[int]:
        if self._members is None:
            built: dict[int, array[int]] = {}
            for i in range(self.records):  # one scan builds every group's member list
                for g in self.group_ids(i):
                    built.setdefault(g, array("I")).append(i)
            self._members = built
        return self._members.get(gid, array("I"))

    # -- lessons ---------------------------------------------------------------
    def lesson_list(self) -> list[dict[str, Any]]:
        return [self.lesson(k) for k in range(1, self.lessons + 1)]

    def lesson(self, k: int) -> dict[str, Any]:
        # Lessons are few and read for every schedule row, so build each once.
        cached = self._lessons.get(k)
        if cached is None:
            cached = self._lessons[k] = self._make_lesson(k)
        return cached

    def _make_lesson(self, k: int) -> dict[str, Any]:
        r = dg.rng(self.seed, "lesson", k)
        created = dg.rand_datetime(r, 2015, 2019)
        return {
            "lessonVersionId": 5000 + k,
            "lessonId": 100 + k,
            "name": f"{LESSON_TOPICS[k % len(LESSON_TOPICS)]} {k:03d}",
            "duration": r.randrange(60, 1800) * 1000,
            "status": "active",
            "inLibrary": r.random() < 0.5,
            "version": r.randint(1, 6),
            "questionnaireType": r.choice((18, 19)),
            "clientId": 1,
            "lessonVersionCustomFields": [],
            "createdDate": dg.fmt_offset(created),
            "modifiedDate": dg.fmt_offset(created + timedelta(days=r.randrange(400))),
        }

    # -- schedules -------------------------------------------------------------
    def schedules(self, i: int) -> list[dict[str, Any]]:
        r = dg.rng(self.seed, "sched", i)
        n = min(r.randrange(4), self.lessons)
        picks = r.sample(range(1, self.lessons + 1), n)  # distinct lessons per user
        if not picks:
            return []
        _, first, last = self.names(i)
        return [self._schedule(i, j, k, first, last, r) for j, k in enumerate(picks)]

    def _schedule(self, i: int, j: int, k: int, first: str | None, last: str, r: Any) -> dict[str, Any]:
        user_id = 1000 + i
        lesson = self.lesson(k)
        completed = started = None
        if r.random() < 0.6:
            status = "completed"
            start = dg.rand_datetime(r, 2019, 2024)
            end = start + timedelta(days=30)
            started = start + timedelta(hours=r.randrange(1, 24 * 20))
            completed = started + timedelta(minutes=r.randrange(5, 180))
        else:
            status = r.choice(("due", "overdue", "scheduled"))
            if status == "scheduled":
                start = dg.rand_datetime(r, 2030, 2031)
                end = start + timedelta(days=30)
            elif status == "overdue":
                start = dg.rand_datetime(r, 2019, 2024)
                end = start + timedelta(days=14)
            else:
                start = dg.rand_datetime(r, 2024, 2025)
                end = dg.rand_datetime(r, 2030, 2031)
        name = " ".join(p for p in (first, last) if p)
        return {
            "lessonName": lesson["name"],
            "lessonId": lesson["lessonId"],
            "lessonVersionId": lesson["lessonVersionId"],
            "version": lesson["version"],
            "userId": user_id,
            "startDate": dg.fmt_millis_z(start),
            "endDate": dg.fmt_millis_z(end),
            "lessonStartedDate": dg.fmt_millis_z(started) if started else None,
            "lessonCompletedDate": dg.fmt_millis_z(completed) if completed else None,
            "userFirstName": first,
            "userLastName": last,
            "lessonDuration": lesson["duration"],
            "progress": lesson["duration"] if completed else 0,
            "chapterCount": 5,
            "questionnaireType": lesson["questionnaireType"],
            "questionCount": 8,
            "scheduleType": "automatic",
            "typeId": 81,
            "thumbnailId": 123456789,
            "lessonThumbnail": f"https://app.velpic.com/downloads/lessons/{lesson['lessonVersionId']}/thumbnail.png",
            "status": status,
            "statusId": SCHEDULE_STATUS_IDS[status],
            "completionTypeId": 77,
            "lessonCompletedBy": user_id if completed else None,
            "lessonCompletedByName": name if completed else None,
            "lessonEvolution": 129,
            "id": user_id * 4 + j,
            "createdDate": dg.fmt_millis_z(start - timedelta(days=1)),
            "modifiedDate": dg.fmt_millis_z(completed or start),
        }

    def schedule(self, sid: int) -> dict[str, Any] | None:
        i, j = sid // 4 - 1000, sid % 4
        if not 0 <= i < self.records:
            return None
        rows = self.schedules(i)
        return rows[j] if j < len(rows) else None


def _group_refs(user: dict[str, Any]) -> set[Any]:
    groups = user.get("groups")
    return {g.get("id") for g in groups if isinstance(g, dict)} if isinstance(groups, list) else set()


def _id_order(row: dict[str, Any]) -> tuple[int, Any]:
    """Integer ids in order, then any ill-typed ids (hostile fixtures) as text, so sorting never fails."""
    rid = row.get("id")
    return (0, rid) if isinstance(rid, int) and not isinstance(rid, bool) else (1, str(rid))


class _LoadedData:
    """Records from a JSONL fixture (or a list of dicts), held in memory; same interface as the generator.

    Users can be inserted and deleted while a listing is being read: listings are offset-paged over
    the users in id order, so a deletion shifts every later record one place down, as in the real API.
    """

    def __init__(self, source: str | Path | Iterable[dict[str, Any]]) -> None:
        rows = dg.load_jsonl(source) if isinstance(source, str | Path) else [dict(r) for r in source]
        strip = lambda row: {k: v for k, v in row.items() if k != "kind"}  # noqa: E731
        self._users = sorted((strip(r) for r in rows if r.get("kind") == "user"), key=_id_order)
        self._groups = sorted((strip(r) for r in rows if r.get("kind") == "group"), key=_id_order)
        self._lessons = [strip(r) for r in rows if r.get("kind") == "lesson"]
        self._by_id: dict[Any, int] = {}
        self._reindex()
        self._schedules: dict[int, list[dict[str, Any]]] = {}
        self._schedule_by_id: dict[int, dict[str, Any]] = {}
        for row in (strip(r) for r in rows if r.get("kind") == "schedule"):
            self._add_schedule(row)

    def _reindex(self) -> None:
        self._by_id = {u.get("id"): n for n, u in enumerate(self._users)}

    def _add_schedule(self, row: dict[str, Any]) -> None:
        lst = self._schedules.setdefault(row.get("userId"), [])
        lst.append(row)
        lst.sort(key=_id_order)
        self._schedule_by_id[row.get("id")] = row

    # -- mutation (tests: records that change while a listing is being read) ------------------
    def insert_user(self, record: dict[str, Any], schedules: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        """Append a user with an id above every existing one (given, or the next free one)."""
        user = {k: v for k, v in record.items() if k != "kind"}
        top = max((u["id"] for u in self._users if _id_order(u)[0] == 0), default=0)
        if "id" not in user:
            user["id"] = top + 1
        elif not isinstance(user["id"], int) or user["id"] <= top:
            raise ValueError(f"an inserted user needs an id above {top}, got {user['id']!r}")
        self._users.append(user)
        self._by_id[user["id"]] = len(self._users) - 1
        for row in schedules:
            self._add_schedule({**{k: v for k, v in row.items() if k != "kind"}, "userId": user["id"]})
        return user

    def delete_user(self, user_id: Any) -> dict[str, Any]:
        """Remove a user (and its schedules); every later user moves one place down the listings."""
        n = self._by_id.get(user_id)
        if n is None:
            raise KeyError(f"no user {user_id!r}")
        user = self._users.pop(n)
        self._reindex()
        for row in self._schedules.pop(user_id, []):
            self._schedule_by_id.pop(row.get("id"), None)
        return user

    def __len__(self) -> int:
        return len(self._users)

    def _is_active(self, u: dict[str, Any]) -> bool:
        return bool(u.get("active", u.get("clientStatusId", ACTIVE_STATUS) == ACTIVE_STATUS))

    def view(self, active_value: str) -> Sequence[int]:
        if active_value == "all":
            return range(len(self._users))
        want = active_value == "active"
        return [n for n, u in enumerate(self._users) if self._is_active(u) == want]

    def in_view(self, i: int, active_value: str) -> bool:
        return active_value == "all" or (active_value == "active") == self._is_active(self._users[i])

    def index_of(self, user_id: int) -> int | None:
        return self._by_id.get(user_id)

    def user(self, i: int) -> dict[str, Any]:
        return self._users[i]

    def find_exact(self, field: str, value: str) -> list[int]:
        return [n for n, u in enumerate(self._users) if u.get(field) == value]

    def matches_q(self, i: int, q: str) -> bool:
        u = self._users[i]
        return any(q in str(u.get(f) or "").lower() for f in ("userName", "firstName", "lastName"))

    def has_role(self, i: int, role: int) -> bool:
        return role in (self._users[i].get("roles") or [])

    def group_list(self) -> Sequence[int]:
        return [g.get("id") for g in self._groups]

    def group(self, gid: int) -> dict[str, Any] | None:
        return next((g for g in self._groups if g.get("id") == gid), None)

    def members(self, gid: int) -> Sequence[int]:
        return [n for n, u in enumerate(self._users) if gid in _group_refs(u)]

    def lesson_list(self) -> list[dict[str, Any]]:
        return self._lessons

    def schedules(self, i: int) -> list[dict[str, Any]]:
        return self._schedules.get(self._users[i].get("id"), [])

    def schedule(self, sid: int) -> dict[str, Any] | None:
        return self._schedule_by_id.get(sid)


class DamstraSimulator(SimulatorBase):
    def __init__(
        self,
        *,
        records: int = 1000,
        seed: int = 1,
        access_key: str = "damstra-demo-key",
        rate: float | None = None,
        burst: int | None = None,
        retry_after: str = "seconds",
        faults: str | FaultSpec | None = None,
        data: str | Path | Iterable[dict[str, Any]] | None = None,
        page_default: int = 20,
        page_cap: int = 100,
        malformed: float = 0.0,
        unknown_status_share: float = 0.0,
        lessons: int = 20,
        on_served: Callable[[web.Request, web.StreamResponse], None] | None = None,
    ) -> None:
        super().__init__(rate=rate, burst=burst, retry_after=retry_after, faults=faults, on_served=on_served)
        if records < 0 or lessons < 0 or not 0.0 <= malformed <= 1.0 or not 1 <= page_default <= page_cap:
            raise ValueError("invalid DamstraSimulator configuration")
        if not 0.0 <= unknown_status_share <= 1.0:
            raise ValueError("unknown_status_share must be between 0 and 1")
        self.access_key = access_key
        self.revoked: set[str] = set()  # keys rotated away: refused before anything else, rate included
        self.page_default, self.page_cap = page_default, page_cap
        self.data: _GeneratedData | _LoadedData = (
            _LoadedData(data)
            if data is not None
            else _GeneratedData(records, seed, malformed, lessons, unknown_status_share)
        )
        self._q_cache: dict[tuple[str, str], array[int]] = {}

    # ---- mutation (loaded data only) -----------------------------------------------
    def _loaded(self) -> _LoadedData:
        if not isinstance(self.data, _LoadedData):
            raise TypeError("inserting or deleting users needs a simulator built with data= (loaded records)")
        self._q_cache.clear()
        return self.data

    def insert_user(self, record: dict[str, Any], schedules: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        """Add a user at the end of the listings (id above every other); returns it with its id."""
        return self._loaded().insert_user(record, schedules)

    def delete_user(self, user_id: Any) -> dict[str, Any]:
        """Remove a user and its schedules; later users shift down one place in every listing."""
        return self._loaded().delete_user(user_id)

    # ---- base hooks ----------------------------------------------------------
    def credential(self, request: web.Request) -> str:
        return request.headers.get("AccessKey", "")

    def authenticate(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("AccessKey") != self.access_key:
            return json_response(ERR_AUTH, status=401)
        return None

    def refuse_early(self, request: web.Request) -> web.StreamResponse | None:
        # A rotated-away key is answered 401 on every request, never a 429 from its old bucket.
        if request.headers.get("AccessKey") in self.revoked:
            return json_response(ERR_AUTH, status=401)
        return None

    def error_response(self, status: int, headers: dict[str, str] | None = None) -> web.Response:
        body = ERR_BODIES.get(status, {"internalCode": status, "error": "Error"})
        return json_response(body, status=status, headers=headers)

    def rotate_key(self, new_key: str) -> None:
        """The old key stops working at once, as the real "Regenerate API Key" does."""
        if new_key != self.access_key:
            self.revoked.add(self.access_key)
        self.revoked.discard(new_key)
        self.access_key = new_key

    def add_routes(self, router: web.UrlDispatcher) -> None:
        routes: list[tuple[str, Callable[[web.Request], Any]]] = [
            ("/user", self._list_users),
            (r"/user/{user_id:\d+}", self._get_user),
            (r"/user/{user_id:\d+}/lesson_schedule", self._user_schedules),
            ("/group", self._list_groups),
            (r"/group/{group_id:\d+}", self._get_group),
            (r"/group/{group_id:\d+}/member", self._group_members),
            ("/lesson", self._list_lessons),
            (r"/lesson_schedule/{schedule_id:\d+}", self._get_schedule),
        ]
        for path, handler in routes:
            router.add_get(BASE + path, handler)
            router.add_get(BASE + path + "/", handler)  # the doc's own examples use a trailing slash
        router.add_post("/_sim/rotate_key", self._sim_rotate_key)

    async def _sim_rotate_key(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rotate_key(str(body["access_key"]))
        return json_response({"ok": True})

    # ---- helpers -------------------------------------------------------------
    def _paging(self, request: web.Request) -> tuple[int, int] | web.Response:
        try:
            start = int(request.query.get("startIndex") or 0)
            size = int(request.query.get("maxResults") or 0)
        except ValueError:
            return _bad_request("startIndex and maxResults must be integers")
        if start < 0 or size < 0:
            return _bad_request("startIndex and maxResults must not be negative")
        size = self.page_default if size == 0 else min(size, self.page_cap)
        return start, size

    def _paged(self, request: web.Request, items: Sequence[Any], build: Callable[[Any], Any]) -> web.Response:
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        start, size = paging
        results = [build(items[k]) for k in range(start, min(len(items), start + size))]
        meta = {"totalResultCount": len(items), "startIndex": start, "endIndex": start + len(results)}
        return json_response({"results": results, "meta": meta})

    def _user_index(self, request: web.Request) -> int | None:
        return self.data.index_of(int(request.match_info["user_id"]))

    # ---- handlers ------------------------------------------------------------
    async def _list_users(self, request: web.Request) -> web.Response:
        query = request.query
        active_value = (query.get("activeValue") or "active").lower()
        if active_value not in ACTIVE_VALUES:
            return _bad_request(f"activeValue must be one of {', '.join(ACTIVE_VALUES)}")
        view: Sequence[int] = self.data.view(active_value)
        exact = [(f, query[p]) for p, f in (("empId", "employeeNumber"), ("emailAddress", "emailAddress")) if p in query]
        q = (query.get("q") or "").lower()
        role_raw = query.get("roleId")
        if exact or q or role_raw:
            try:
                role = int(role_raw) if role_raw else None
            except ValueError:
                return _bad_request("roleId must be an integer")
            view = self._filtered(view, active_value, exact, q, role)
        return self._paged(request, view, self.data.user)

    def _filtered(
        self, view: Sequence[int], active_value: str, exact: list[tuple[str, str]], q: str, role: int | None
    ) -> Sequence[int]:
        cands: Sequence[int]
        if exact:
            # Exact filters shrink the candidates to a handful before anything else runs.
            found = self.data.find_exact(*exact[0])
            for field, value in exact[1:]:
                other = set(self.data.find_exact(field, value))
                found = [i for i in found if i in other]
            cands = [i for i in found if self.data.in_view(i, active_value) and (not q or self.data.matches_q(i, q))]
        elif q:
            cached = self._q_cache.get((active_value, q))
            if cached is None:
                # Compact index array, computed once per filter value and reused by every page.
                cached = array("I", (i for i in view if self.data.matches_q(i, q)))
                if len(self._q_cache) >= _FILTER_CACHE_MAX:
                    self._q_cache.pop(next(iter(self._q_cache)))
                self._q_cache[(active_value, q)] = cached
            cands = cached
        else:
            cands = view
        if role is not None:
            cands = [i for i in cands if self.data.has_role(i, role)]
        return cands

    async def _get_user(self, request: web.Request) -> web.Response:
        i = self._user_index(request)
        return _not_found("user") if i is None else json_response(self.data.user(i))

    async def _user_schedules(self, request: web.Request) -> web.Response:
        i = self._user_index(request)
        if i is None:
            return _not_found("user")
        status = (request.query.get("status") or "all").lower()
        if status not in SCHEDULE_FILTERS:
            return _bad_request(f"status must be one of {', '.join(SCHEDULE_FILTERS)}")
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        start, size = paging
        rows = [s for s in self.data.schedules(i) if status == "all" or s.get("status") == status]
        return json_response({"results": rows[start : start + size]})  # S2 has no meta, per the doc

    async def _list_groups(self, request: web.Request) -> web.Response:
        q = (request.query.get("q") or "").lower()
        gids: Sequence[int] = self.data.group_list()
        if q:
            gids = [g for g in gids if q in str((self.data.group(g) or {}).get("name", "")).lower()]
        return self._paged(request, gids, self.data.group)

    async def _get_group(self, request: web.Request) -> web.Response:
        group = self.data.group(int(request.match_info["group_id"]))
        return _not_found("group") if group is None else json_response(group)

    async def _group_members(self, request: web.Request) -> web.Response:
        gid = int(request.match_info["group_id"])
        if self.data.group(gid) is None:
            return json_response({"message": f"Group with id {gid} not found", "reason": "Group not found",
                                  "internalCode": 842, "statusCode": 404}, status=404)
        return self._paged(request, self.data.members(gid), self.data.user)

    async def _list_lessons(self, request: web.Request) -> web.Response:
        query = request.query
        lessons = self.data.lesson_list()
        q = (query.get("q") or "").lower()
        if q:
            lessons = [x for x in lessons if q in str(x.get("name", "")).lower()]
        if query.get("lessonIds"):
            try:
                wanted = {int(v) for v in query["lessonIds"].split(",") if v.strip()}
            except ValueError:
                return _bad_request("lessonIds must be comma-separated integers")
            lessons = [x for x in lessons if x.get("lessonId") in wanted]
        if query.get("publishedStates"):
            states = {v.strip().lower() for v in query["publishedStates"].split(",")}
            lessons = [x for x in lessons if x.get("status") in states]
        return self._paged(request, lessons, lambda x: x)

    async def _get_schedule(self, request: web.Request) -> web.Response:
        row = self.data.schedule(int(request.match_info["schedule_id"]))
        if row is None:
            return json_response({"internalCode": 840, "error": "Lesson Schedule does not exist"}, status=404)
        # S1 (full LessonSchedule) carries no status/statusId/scheduleType, unlike the S2 list item.
        full = {k: v for k, v in row.items() if k not in ("status", "statusId", "scheduleType")}
        full.update({"active": row.get("status") != "cancelled", "clientId": 1, "reminders": [],
                     "questionResults": [], "userGroups": [], "supervisors": []})
        return json_response(full)
