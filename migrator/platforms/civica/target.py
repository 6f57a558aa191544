"""Writing to a Civica Learning portal: users (async SetUser), their groups, and certificate awards.

Users are safe to resend (a second create answers 409 and becomes a merge update), so they are
written as upserts; the status id of every 202 is stored so a resumed run polls it instead of
submitting again. AwardCertificate adds a row on every call, so an award whose outcome is unknown
is looked up (GetUsersCertificates over a one-second window) before it is ever sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from migrator.connectors import Dep, Encoded, Loss, TargetStream, WriteItem, segment
from migrator.dates import format_utc, normalize, plus
from migrator.http import AmbiguousOutcome, HostClient, RequestStats
from migrator.model import Certificate, Group, RecordError, User
from migrator.platforms.civica.config import CivicaTarget

EPOCH = "1970-01-01T00:00:00.000Z"
SETUSER_ATTEMPTS = 4
PROFILE_FIELDS = {  # canonical field → Civica profile key
    "first_name": "forename",
    "last_name": "surname",
    "email": "mail",
    "employee_number": "employee_number",
    "timezone": "timezone",
}


class Civica:
    """One portal: the client, the profile fields it defines, and the async-status poller."""

    def __init__(self, cfg: CivicaTarget, secrets: list[str]):
        self.cfg = cfg
        self.client = HostClient(
            cfg.base_url,
            limits=cfg.limits,
            auth=(cfg.scope, cfg.api_key),
            headers={"Content-Type": "application/json"},
            secrets=secrets,
            name="civica",
        )
        self.profile_fields: set[str] = set(PROFILE_FIELDS.values()) | {"username"}
        self.streams: dict[str, TargetStream] = {
            "groups": CivicaGroups(),
            "users": CivicaUsers(self),
            "certificates": CivicaCertificates(self),
        }

    async def prepare(self, stats: RequestStats) -> None:
        fields = await self.read("GetProfileFields", {"params": {}}, stats)
        if isinstance(fields, dict) and fields:
            self.profile_fields = set(fields)

    async def call(self, api: str, body: dict[str, Any], stats: RequestStats, accept=(200,), **kw: Any):
        return await self.client.request("POST", f"/{api}", json=body, accept=accept, stats=stats, **kw)

    async def read(self, api: str, body: dict[str, Any], stats: RequestStats) -> Any:
        """A read-only RPC (POST by Civica's convention, yet safe to repeat)."""
        return await self.client.request_json("POST", f"/{api}", json=body, stats=stats)

    async def wait_status(self, tid: str, stats: RequestStats) -> tuple[int, str]:
        """Poll GET /status/{tid} with doubling pauses; (0, …) if it never settles in time."""
        pause, deadline = self.cfg.poll_initial, time.monotonic() + self.cfg.poll_timeout
        while True:
            if pause > 0:
                await asyncio.sleep(pause)
            body = await self.client.request_json("GET", f"/status/{segment(tid)}", stats=stats)
            status = int(body.get("status") or 0)
            if status in (2, 3):
                return status, str(body.get("message") or "")
            if status == 0 or time.monotonic() > deadline:
                return 0, "status unknown"
            pause = min(max(pause * 2, 0.05), self.cfg.poll_max)


class CivicaGroups(TargetStream):
    """Civica has no group API: a group exists by name once a user is put in it."""

    name = "groups"
    verify_note = "Civica cannot list groups; memberships are verified on users.groups"

    def natural_key(self, record: Group) -> str:
        return record.name

    def encode(self, record: Group, parents: dict[Dep, str]) -> Encoded:
        losses = []
        if record.description:
            losses.append(Loss("description", "Civica groups hold only a name"))
        if record.parent_id:
            losses.append(Loss("parent_id", "Civica has no group hierarchy"))
        if not record.name.strip():
            raise RecordError("missing_field", "group name is empty; Civica identifies groups by name")
        return Encoded(None, record.name, losses, requests=0)

    async def write(self, item: WriteItem) -> str:
        return item.encoded.key


class CivicaUsers(TargetStream):
    name = "users"
    write_safety = "upsert"
    verify_note = "active state is not readable through Civica's API and is not compared"

    def __init__(self, civica: Civica):
        self.civica = civica

    def natural_key(self, record: User) -> str:
        return record.username

    def encode(self, record: User, parents: dict[Dep, str]) -> Encoded:
        for canonical, key in (("first_name", "forename"), ("last_name", "surname")):
            if not getattr(record, canonical):
                raise RecordError("missing_field", f"{canonical} is empty but Civica requires profile.{key}")
        profile: dict[str, Any] = {"username": record.username}
        losses: list[Loss] = []
        for canonical, key in PROFILE_FIELDS.items():
            value = getattr(record, canonical)
            if value is None:
                continue
            if key in self.civica.profile_fields:
                profile[key] = value
            else:
                losses.append(Loss(canonical, f"the portal has no '{key}' profile field"))
        for canonical in ("phone", "mobile"):
            if getattr(record, canonical):
                losses.append(Loss(canonical, "Civica has no profile field for phone numbers"))
        groups = sorted({parents[("groups", gid)] for gid in record.group_ids})
        payload = {"profile": profile, "groups": groups, "active": record.active}
        return Encoded(payload, record.username, losses, requests=3 if record.active else 6)

    def carried(self, encoded: Encoded) -> dict[str, Any]:
        return {**encoded.payload["profile"], "groups": encoded.payload["groups"]}

    async def _submit(self, body: dict[str, Any], item: WriteItem, step: str) -> None:
        """Send one SetUser, store its status id, wait until Civica has applied it.

        A status that ends failed (3) or never settles is sent again: SetUser is safe to repeat
        (a second create meets 409 and becomes an update), within a small budget.
        """
        for _attempt in range(SETUSER_ATTEMPTS):
            resp = await self.civica.call("SetUser", body, item.stats, accept=(200, 202, 409))
            if resp.status == 409:
                raise _Exists()
            location = resp.headers.get("location")
            if resp.status == 200 or not location:
                return  # applied in real time
            tid = location.rstrip("/").rsplit("/", 1)[-1]
            await item.save_token(f"{step}:{tid}")
            outcome = await self._settled(tid, item, step)
            if outcome is True:
                return
            last = outcome or "status unknown after polling"
        raise RecordError(
            "target_rejected", f"Civica SetUser {step} did not succeed in {SETUSER_ATTEMPTS} tries: {last}"
        )

    async def _settled(self, tid: str, item: WriteItem, step: str) -> bool | str:
        """True once applied; the failure message if it failed; False if it never settled."""
        status, message = await self.civica.wait_status(tid, item.stats)
        if status == 2:
            return True
        if status == 3:
            if step == "create" and "in use" in message.lower():
                raise _Exists()
            return message or "failed without a message"
        return False

    async def write(self, item: WriteItem) -> str:
        payload, uid = item.encoded.payload, item.encoded.key
        step, _, tid = (item.token or "").partition(":")
        groups = [{"name": g} for g in payload["groups"]]
        if step in ("", "create", "update"):
            try:
                if not (tid and await self._settled(tid, item, step) is True):
                    create = {
                        "params": {"action": "create", "send_welcome": False},
                        "profile": payload["profile"],
                        "groups": groups,
                    }
                    await self._submit(create, item, "create")
            except _Exists:
                update = {
                    "params": {"action": "update", "uid": uid},
                    "profile": {k: v for k, v in payload["profile"].items() if k != "username"},
                    "groups": [{**g, "action": "add"} for g in groups],
                }
                await self._submit(update, item, "update")
            step = ""
        deactivated = step == "deactivate" and tid and await self._settled(tid, item, step) is True
        if not payload["active"] and not deactivated:
            await self._submit({"params": {"action": "deactivate", "uid": uid}}, item, "deactivate")
        return uid

    async def export(self, stats: RequestStats) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        future = format_utc(datetime.now(UTC) + timedelta(days=3650))  # everyone "last logged in before"
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"date": future}
            if cursor:
                params["cursor"] = cursor
            body = await self.civica.read("GetInactiveUsers", {"params": params}, stats)
            for user in body.get("users") or []:
                profile = dict(user.get("profile") or {})
                uid = (user.get("params") or {}).get("uid") or profile.get("username")
                profile.setdefault("username", uid)
                groups = sorted(g.get("name") for g in user.get("groups") or [])
                yield uid, {**profile, "groups": groups}
            cursor = body.get("next_cursor")
            if not cursor or not body.get("users"):
                return


class _Exists(Exception):
    """SetUser create met an existing username."""


class CivicaCertificates(TargetStream):
    name = "certificates"
    write_safety = "lookup"

    def __init__(self, civica: Civica):
        self.civica = civica

    def encode(self, record: Certificate, parents: dict[Dep, str]) -> Encoded:
        uid = parents[("users", record.user_id)]
        awarded = normalize(record.awarded_at, "awarded_at")
        certification: dict[str, Any] = {
            "awardMode": "Manual",
            "awardedDate": awarded,
            "suppressNotifications": self.civica.cfg.suppress_notifications,
        }
        if record.expires_at:
            certification["expiryDate"] = normalize(record.expires_at, "expires_at")
        if record.score is not None:
            certification["score"] = record.score
        payload = {"params": {"uid": uid, "ref": record.course_id}, "certification": certification}
        return Encoded(payload, f"{uid}|{record.course_id}|{awarded}", requests=1)

    async def write(self, item: WriteItem) -> str:
        for _attempt in range(self.civica.cfg.limits.max_retries + 1):
            try:
                await self.civica.call("AwardCertificate", item.encoded.payload, item.stats, idempotent=False)
                return item.encoded.key
            except AmbiguousOutcome:
                # it may have been awarded: only a lookup may decide whether to send again
                if await self.reconcile(item):
                    return item.encoded.key
        raise RecordError("unknown_outcome", "AwardCertificate kept failing ambiguously; not resent further")

    async def reconcile(self, item: WriteItem) -> str | None:
        uid, ref, awarded = item.encoded.key.split("|", 2)
        params: dict[str, Any] = {"from_date": awarded, "to_date": plus(awarded, 1)}
        while True:
            body = await self.civica.read("GetUsersCertificates", {"params": params}, item.stats)
            for row in body.get("certificates") or []:
                date = row.get("awared_date") or row.get("awarded_date") or ""
                if row.get("username") == uid and row.get("certification_id") == ref and normalize(date, "d") == awarded:
                    return item.encoded.key
            if not body.get("next_cursor"):
                return None
            params["cursor"] = body["next_cursor"]

    async def export(self, stats: RequestStats) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        params: dict[str, Any] = {"from_date": EPOCH}
        while True:
            body = await self.civica.read("GetUsersCertificates", {"params": params}, stats)
            for row in body.get("certificates") or []:
                date = normalize(row.get("awared_date") or row.get("awarded_date") or EPOCH, "awared_date")
                yield f"{row.get('username')}|{row.get('certification_id')}|{date}", {}
            if not body.get("next_cursor"):
                return
            params["cursor"] = body["next_cursor"]
