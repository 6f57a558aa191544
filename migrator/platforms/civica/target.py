"""Writing to a Civica Learning portal: users (async SetUser), their groups, and certificate awards.

Users are safe to resend: a create always goes first, and a username already in use is read back
(GetUser). A user holding exactly what we would write is ours (an earlier attempt of this migration
created it, perhaps just before a kill): settled as written. One that differs existed before this
migration and follows the plan's `existing` policy: dead-lettered as a `conflict` (default), updated,
or skipped. The status id of every 202 is stored so a resumed run polls it instead of submitting
again. Civica's documentation is silent on username case, so keys are compared ignoring case. AwardCertificate adds a row on every call, so an award whose outcome is unknown
is looked up (GetUsersCertificates over a one-second window) before it is ever sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from migrator.connectors import Dep, Encoded, Found, Loss, TargetStream, WriteItem, segment
from migrator.dates import format_utc, normalize, plus
from migrator.http import AmbiguousOutcome, HostClient, RequestStats
from migrator.model import Certificate, Group, RecordError, Skip, User
from migrator.platforms.civica.config import CivicaTarget
from migrator.platforms.registry import TargetSide

EPOCH = "1970-01-01T00:00:00.000Z"
SETUSER_ATTEMPTS = 4
PROFILE_FIELDS = {  # canonical field → Civica profile key
    "first_name": "forename",
    "last_name": "surname",
    "email": "mail",
    "employee_number": "employee_number",
    "timezone": "timezone",
}


class Civica(TargetSide):
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
        self.profile_specs: dict[str, dict[str, Any]] = {}  # GetProfileFields: mode, type, values
        self.awarded_refs: set[str] = set()  # certification ids seen in the portal's awards
        self.awards_listed = False  # ... once every award was listed (export ran to the end)
        self.streams: dict[str, TargetStream] = {
            "groups": CivicaGroups(),
            "users": CivicaUsers(self),
            "certificates": CivicaCertificates(self),
        }

    async def prepare(self, stats: RequestStats) -> None:
        fields = await self.read("GetProfileFields", {"params": {}}, stats)
        if isinstance(fields, dict) and fields:
            self.profile_fields = set(fields)
            self.profile_specs = {k: v for k, v in fields.items() if isinstance(v, dict)}

    async def check_references(
        self, wanted: set[tuple[str, str]], stats: RequestStats
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """Dry run: which certification refs the portal can be shown to hold. Civica has no API that
        lists certifications, so only refs someone was already awarded are confirmed."""
        if not self.awards_listed:  # the dry run's own listing of the target usually did it already
            async for _key, _fields in self.streams["certificates"].export(stats):
                pass
        out: dict[tuple[str, str], tuple[str, str]] = {}
        for kind, value in wanted:
            if kind == "certification" and value in self.awarded_refs:
                out[(kind, value)] = ("exists", "awarded in the portal already")
            else:
                out[(kind, value)] = (
                    "unconfirmed",
                    "Civica cannot list certifications and nobody holds this one yet: check the ref in the portal"
                    " (a wrong ref fails every award, and the stream stops after its first identical failures)",
                )
        return out

    async def get_user(self, uid: str, stats: RequestStats) -> dict[str, Any] | None:
        resp = await self.call("GetUser", {"params": {"uid": uid}}, stats, accept=(200, 404))
        return resp.json() if resp.status == 200 else None

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
    checks_existing = True
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
        self._check_profile(profile)
        groups = sorted({parents[("groups", gid)] for gid in record.group_ids})
        payload = {"profile": profile, "groups": groups, "active": record.active}
        return Encoded(payload, record.username, losses, requests=3 if record.active else 6)

    def _check_profile(self, profile: dict[str, Any]) -> None:
        """Refuse, before sending, what the portal's profile fields (GetProfileFields) would refuse."""
        for key, spec in self.civica.profile_specs.items():
            label = spec.get("label") or key
            value = profile.get(key)
            if spec.get("mode") == "Mandatory" and value in (None, "", []):
                raise RecordError(
                    "missing_field",
                    f"the portal's profile field '{key}' ({label}) is Mandatory and the mapping does not fill it",
                )
            allowed = spec.get("values") or []
            if value is None or spec.get("type") not in ("SingleChoice", "MultipleChoice"):
                continue
            given = value if isinstance(value, list) else [value]
            bad = [v for v in given if v not in allowed]
            if bad:
                raise RecordError(
                    "invalid_value",
                    f"profile.{key} ({label}) does not allow {bad[0]!r}; the portal allows: {', '.join(map(str, allowed))}",
                )

    def carried(self, encoded: Encoded) -> dict[str, Any]:
        return {**encoded.payload["profile"], "groups": encoded.payload["groups"]}

    def differences(self, encoded: Encoded, held: dict[str, Any]) -> list[str]:
        """Our profile fields and groups against the portal's (fields only the portal has do not count;
        it leaves empty fields out of its answers)."""
        out = []
        for key, value in encoded.payload["profile"].items():
            have = held.get(key)
            if have != value and not (value in ("", []) and have in (None, "", [])):
                out.append(f"{key}: {have!r} in the target, {value!r} from the source")
        ours, theirs = sorted(encoded.payload["groups"]), sorted(map(str, held.get("groups") or []))
        if ours != theirs:
            out.append(f"groups: {theirs} in the target, {ours} from the source")
        return out

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
            await item.save_progress(step, tid)
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
        step, tid = (item.progress.step, item.progress.job_id or "") if item.progress else ("", "")
        if step in ("", "create", "update"):
            # an earlier attempt's status id, applied: that step is done (a create applied is ours)
            try:
                applied = bool(tid) and await self._settled(tid, item, step) is True
            except _Exists:  # that create met a username in use: decide below, by what the portal holds
                applied = False
            if not applied:
                uid = await self._create_or_settle_existing(item)
            step = ""
        deactivated = step == "deactivate" and tid and await self._settled(tid, item, step) is True
        if not payload["active"] and not deactivated:
            await self._submit({"params": {"action": "deactivate", "uid": uid}}, item, "deactivate")
        return uid

    async def _create_or_settle_existing(self, item: WriteItem) -> str:
        """Create the user; if the username is taken, decide by what the portal holds. Returns the uid."""
        payload, uid = item.encoded.payload, item.encoded.key
        create = {
            "params": {"action": "create", "send_welcome": False},
            "profile": payload["profile"],
            "groups": [{"name": g} for g in payload["groups"]],
        }
        pause, deadline = self.civica.cfg.poll_initial, time.monotonic() + self.civica.cfg.poll_timeout
        while True:
            try:
                await self._submit(create, item, "create")
                return uid
            except _Exists:
                pass
            held = await self.civica.get_user(uid, item.stats)
            if held is not None:
                return await self._existing(item, held)
            # taken, yet not readable: a create still being processed holds the name (an earlier
            # attempt of ours, or someone else's); it either lands (then we compare) or frees it
            if time.monotonic() > deadline:
                raise RecordError("target_rejected", f"username '{uid}' stayed taken by a create still in process")
            await asyncio.sleep(max(pause, 0.05))
            pause = min(max(pause * 2, 0.05), self.civica.cfg.poll_max)

    async def _existing(self, item: WriteItem, held: dict[str, Any]) -> str:
        """The username exists in the portal: ours if it holds exactly what we would write, else
        the plan's `existing` policy decides."""
        payload = item.encoded.payload
        held_profile = held.get("profile") or {}
        uid = (held.get("params") or {}).get("uid") or held_profile.get("username") or item.encoded.key
        differences = self.differences(item.encoded, _as_exported(held))
        if not differences:
            return Found(uid)  # ours to settle; it was there already (perhaps from a killed attempt of ours)
        if item.existing == "update":
            update = {
                "params": {"action": "update", "uid": uid},
                "profile": {k: v for k, v in payload["profile"].items() if k != "username"},
                "groups": [{"name": g, "action": "add"} for g in payload["groups"]],
            }
            await self._submit(update, item, "update")
            return uid
        shown = "; ".join(differences[:4]) + ("; …" if len(differences) > 4 else "")
        if item.existing == "skip":
            raise Skip(
                f"user '{uid}' already existed in the target and was left as it is ({shown}); its completions"
                " are attached to it (streams.users.existing = \"skip\")",
                target_id=uid,
            )
        raise RecordError(
            "conflict",
            f"user '{uid}' already exists in the target and differs from the source ({shown}); nothing was"
            f" overwritten. To carry it: set streams.{item.stream}.existing = \"update\" (or \"skip\") in the plan"
            " and run `migrator dlq retry PLAN --class conflict`",
        )

    async def export(self, stats: RequestStats) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        future = format_utc(datetime.now(UTC) + timedelta(days=3650))  # everyone "last logged in before"
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"date": future}
            if cursor:
                params["cursor"] = cursor
            body = await self.civica.read("GetInactiveUsers", {"params": params}, stats)
            for user in body.get("users") or []:
                row = _as_exported(user)
                yield row["username"], row
            cursor = body.get("next_cursor")
            if not cursor or not body.get("users"):
                return


class _Exists(Exception):
    """SetUser create met an existing username."""


def _as_exported(user: dict[str, Any]) -> dict[str, Any]:
    """A GetUser / GetInactiveUsers row as `export` yields it: the profile, its username, its groups."""
    profile = dict(user.get("profile") or {})
    profile.setdefault("username", (user.get("params") or {}).get("uid"))
    return {**profile, "groups": sorted(str(g.get("name")) for g in user.get("groups") or [])}


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
        return Encoded(
            payload, f"{uid}|{record.course_id}|{awarded}", requests=1, references=(("certification", record.course_id),)
        )

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
                same_user = self.fold_key(str(row.get("username"))) == self.fold_key(uid)  # as the portal compares names
                if same_user and row.get("certification_id") == ref and normalize(date, "d") == awarded:
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
                self.civica.awarded_refs.add(str(row.get("certification_id")))
                yield f"{row.get('username')}|{row.get('certification_id')}|{date}", {}
            if not body.get("next_cursor"):
                self.civica.awards_listed = True
                return
            params["cursor"] = body["next_cursor"]
