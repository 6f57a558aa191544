"""Civica Learning simulator: the RPC-style target a migration writes into.

SetUser is asynchronous (202 + Location, applied after ``status_delay``; a ``status_fail`` share ends
status 3 instead, and a ``status_stuck`` share stays status 1 for ``status_stuck_for`` seconds and then
ends 3 - a create that is stuck still holds its username, so a resend meanwhile meets 409), AwardCertificate is
deliberately not idempotent, and reads page with opaque cursors - the behaviours a resumable,
exactly-once engine has to cope with.

Civica's documentation does not say whether usernames are case-sensitive, so both readings are
offered: ``usernames_case_sensitive=True`` (the default) keeps ``Ann`` and ``ann`` apart; False makes
them one user (a create of ``ann`` meets 409 when ``Ann`` exists, and every ``uid`` is matched
ignoring case).
"""

from __future__ import annotations

import base64
import binascii
import random
import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from migrator.dates import try_parse_iso as parse_iso  # the one ISO reader; tests import it here
from migrator.simulate import datagen as dg
from migrator.simulate.base import SimulatorBase, json_response
from migrator.simulate.faults import FaultSpec

PAGE_SIZE = 500
WRITE_APIS = frozenset({"SetUser", "AwardCertificate", "DeleteUser"})
SET_USER_ACTIONS = ("create", "update", "activate", "deactivate")
AWARD_MODES = ("manual", "award", "renew")
ALWAYS_REQUIRED = ("username", "forename", "surname")
ERR_BODIES: dict[int, str] = {
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_CERT_TOPICS = ("First Aid", "Fire Warden", "Manual Handling", "Working at Heights", "Forklift Licence",
                "Food Safety", "Data Protection", "Safeguarding")


def default_certifications() -> dict[str, str]:
    return {f"CERT-{n}": f"{_CERT_TOPICS[n % len(_CERT_TOPICS)]} Level {n - 100}" for n in range(101, 141)}


def default_profile_fields() -> dict[str, dict[str, Any]]:
    def text(label: str, mode: str, order: int) -> dict[str, Any]:
        return {"label": label, "mode": mode, "order": order, "type": "Text"}

    return {
        "username": text("Username", "Mandatory", 0),
        "forename": text("First name", "Mandatory", 110),
        "surname": text("Surname", "Mandatory", 120),
        "mail": text("Email address", "Optional", 130),
        "employee_number": text("Employee number", "Optional", 140),
        "timezone": text("Time zone", "AdminOnly", 900),
    }


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _encode_cursor(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


def _decode_cursor(text: Any, kind: str) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        obj = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("k") == kind else None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"message": message}, status=status, headers=headers)


@dataclass
class CivicaUser:
    profile: dict[str, Any]
    groups: set[str] = field(default_factory=set)
    active: bool = True
    modified_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    seq: int = 0  # position in insertion order; drives GetInactiveUsers cursors


@dataclass
class Award:
    username: str
    ref: str
    awarded_date: str  # as emitted: YYYY-MM-DDTHH:MM:SS.sssZ
    expiry_date: str | None
    score: float | None
    seq: int
    award_mode: str = "manual"


@dataclass
class _Op:
    tid: str
    due: float
    action: str
    uid: str
    profile: dict[str, Any]
    groups: list[tuple[str, str]]
    fail: bool
    stuck: bool = False


class CivicaSimulator(SimulatorBase):
    def __init__(
        self,
        *,
        scope: str = "demo.learning-admin.com",
        api_key: str = "civica-demo-key",
        base_path: str = "",
        status_delay: float = 0.5,
        status_fail: float = 0.0,
        status_stuck: float = 0.0,
        status_stuck_for: float = 2.0,
        rate: float | None = None,
        burst: int | None = None,
        retry_after: str = "seconds",
        faults: str | FaultSpec | None = None,
        certifications: dict[str, str] | None = None,
        profile_fields: dict[str, Any] | None = None,
        data: str | Path | None = None,
        seed: int = 1,
        usernames_case_sensitive: bool = True,
        on_served: Callable[[web.Request, web.StreamResponse], None] | None = None,
    ) -> None:
        super().__init__(rate=rate, burst=burst, retry_after=retry_after, faults=faults, on_served=on_served)
        if status_delay < 0 or not 0.0 <= status_fail <= 1.0:
            raise ValueError("status_delay must be >= 0 and status_fail in [0, 1]")
        if status_stuck_for < 0 or not 0.0 <= status_stuck <= 1.0:
            raise ValueError("status_stuck_for must be >= 0 and status_stuck in [0, 1]")
        self.scope, self.api_key = scope, api_key
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.status_delay, self.status_fail = status_delay, status_fail
        self.status_stuck, self.status_stuck_for = status_stuck, status_stuck_for
        self.certifications = dict(certifications) if certifications is not None else default_certifications()
        self.profile_fields = dict(profile_fields) if profile_fields is not None else default_profile_fields()
        self._rng = random.Random(seed)
        self.users: dict[str, CivicaUser] = {}
        self.usernames_case_sensitive = usernames_case_sensitive
        self._by_folded: dict[str, str] = {}  # casefolded username → username as stored
        self._order: list[str] = []
        self.awards: list[Award] = []
        self._award_index: list[tuple[int, int]] = []  # sorted (awarded ms, seq)
        self.set_user_calls: dict[str, int] = {}
        self.award_calls = 0
        self._ops: deque[_Op] = deque()
        self._stuck: deque[_Op] = deque()  # kept apart so they never hold up the ops behind them
        self.failed_ops = 0  # SetUser ops that ended status 3 by status_fail
        self.stuck_ops = 0  # ... by status_stuck (after staying status 1)
        self._pending_creates: dict[str, int] = {}
        self._statuses: dict[str, tuple[int, str]] = {}
        self._next_tid = 1
        self._apis: dict[str, Callable[[dict[str, Any], dict[str, Any]], Awaitable[web.Response]]] = {
            "SetUser": self._set_user, "GetUser": self._get_user, "GetInactiveUsers": self._get_inactive_users,
            "GetModifiedUsers": self._get_modified_users, "GetProfileFields": self._get_profile_fields,
            "AwardCertificate": self._award_certificate, "GetUsersCertificates": self._get_users_certificates,
            "DeleteUser": self._delete_user,
        }
        if data is not None:
            self._preload(data)

    # ---- state -----------------------------------------------------------------
    def _preload(self, path: str | Path) -> None:
        for row in dg.load_jsonl(path):
            if row.get("kind") != "user":
                continue
            profile = row.get("profile") or {}
            if not isinstance(profile.get("username"), str):
                raise ValueError(f"{path}: user record without profile.username: {row!r}")
            self._insert(CivicaUser(profile=dict(profile), groups=set(row.get("groups") or []),
                                    active=bool(row.get("active", True))))

    def _insert(self, user: CivicaUser) -> None:
        user.seq = len(self._order)
        self._order.append(user.profile["username"])
        self.users[user.profile["username"]] = user
        self._by_folded[user.profile["username"].casefold()] = user.profile["username"]

    def _canon(self, uid: str) -> str:
        """The username a request's uid names: itself, or (ignoring case) the one stored or being created."""
        if self.usernames_case_sensitive:
            return uid
        folded = uid.casefold()
        known = self._by_folded.get(folded)
        if known is not None and known in self.users:
            return known
        return next((p for p in self._pending_creates if p.casefold() == folded), uid)

    @property
    def pending(self) -> int:
        return len(self._ops) + len(self._stuck)

    def settle(self, now: float | None = None) -> None:
        """Apply every queued SetUser whose delay has passed, in submission order."""
        now = time.monotonic() if now is None else now
        while self._ops and self._ops[0].due <= now:
            op = self._ops.popleft()
            self._statuses[op.tid] = self._apply(op)
        while self._stuck and self._stuck[0].due <= now:
            op = self._stuck.popleft()
            self._statuses[op.tid] = self._apply(op)

    def _apply(self, op: _Op) -> tuple[int, str]:
        if op.action == "create":
            left = self._pending_creates.get(op.uid, 1) - 1
            if left > 0:
                self._pending_creates[op.uid] = left
            else:
                self._pending_creates.pop(op.uid, None)
        if op.stuck:
            self.stuck_ops += 1
            return 3, "simulated processing failure after a long pending status"
        if op.fail:
            self.failed_ops += 1
            return 3, "simulated processing failure"
        if op.action == "create":
            if self._canon(op.uid) in self.users:
                return 3, "username already in use"
            profile = {k: v for k, v in op.profile.items() if v is not None}
            self._insert(CivicaUser(profile=profile, groups={name for name, _ in op.groups}))
            return 2, ""
        user = self.users.get(op.uid)
        if user is None:  # deleted while the op was queued
            return 3, "user not found"
        if op.action == "update":
            for key, value in op.profile.items():
                if value is None:
                    user.profile.pop(key, None)
                else:
                    user.profile[key] = value
            for name, action in op.groups:
                if action == "remove":
                    user.groups.discard(name)
                else:
                    user.groups.add(name)
        else:
            user.active = op.action == "activate"
        user.modified_at = datetime.now(UTC)
        return 2, ""

    def duplicate_awards(self) -> int:
        return len(self.awards) - len({(a.username, a.ref, a.awarded_date) for a in self.awards})

    # ---- base hooks --------------------------------------------------------------
    def on_request(self) -> None:
        self.settle()

    def credential(self, request: web.Request) -> str:
        return request.headers.get("Authorization", "")

    def authenticate(self, request: web.Request) -> web.StreamResponse | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode() if token.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or ":" not in decoded:
            return _error(401, "authentication required", {"WWW-Authenticate": 'Basic realm="Civica Learning"'})
        user, _, password = decoded.partition(":")
        if (user, password) != (self.scope, self.api_key):
            return _error(403, "invalid credentials")
        return None

    def error_response(self, status: int, headers: dict[str, str] | None = None) -> web.Response:
        return _error(status, ERR_BODIES.get(status, "Error"), headers)

    def is_write(self, request: web.Request) -> bool:
        return request.method == "POST" and request.path.rsplit("/", 1)[-1] in WRITE_APIS

    def platform_stats(self) -> dict[str, Any]:
        return {
            "users": len(self.users),
            "active_users": sum(1 for u in self.users.values() if u.active),
            "awards": len(self.awards),
            "duplicate_awards": self.duplicate_awards(),
            "pending": self.pending,
            "failed_ops": self.failed_ops,
            "stuck_ops": self.stuck_ops,
            "set_user_calls": dict(self.set_user_calls),
            "award_calls": self.award_calls,
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", f"{self.base_path}/status/{{tid}}", self._status)
        router.add_route("*", f"{self.base_path}/{{api}}", self._rpc)

    # ---- transport -----------------------------------------------------------------
    async def _status(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _error(405, "use GET for status", {"Allow": "GET"})
        tid = request.match_info["tid"]
        status, message = self._statuses.get(tid, (0, ""))
        return json_response({"message": message, "status": status, "tid": tid})

    async def _rpc(self, request: web.Request) -> web.Response:
        name = request.match_info["api"]
        handler = self._apis.get(name)
        if handler is None:
            return _error(404, f"unknown API {name}")
        if request.method != "POST":
            return _error(405, f"{name} only accepts POST", {"Allow": "POST"})
        raw = await request.read()
        lenient = name == "GetProfileFields"  # documented without a body at all
        if not raw.strip() and lenient:
            return await handler({}, {})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        params = body.get("params", {} if lenient else None)
        if not isinstance(params, dict):
            return _error(400, "params object is required")
        return await handler(body, params)

    # ---- validation ------------------------------------------------------------------
    def _check_value(self, key: str, value: Any) -> str | None:
        spec = self.profile_fields[key]
        kind, values = spec.get("type", "Text"), spec.get("values") or []
        if kind in ("Text", "OU") and not isinstance(value, str):
            return f"profile.{key} must be a string"
        if kind == "Date":
            try:
                date.fromisoformat(value)
            except (TypeError, ValueError):
                return f"profile.{key} must be a date (YYYY-MM-DD)"
        if kind == "SingleChoice" and value not in values:
            return f"profile.{key} must be one of: {', '.join(values)}"
        if kind == "MultipleChoice" and (
            not isinstance(value, list) or any(v not in values for v in value)
        ):
            return f"profile.{key} must be a list of: {', '.join(values)}"
        return None

    def _check_profile(self, profile: dict[str, Any], create: bool, override: bool) -> str | None:
        for key in profile:
            if key not in self.profile_fields:
                return f"profile.{key} is not a known profile field"
        if create:
            required = [k for k, s in self.profile_fields.items() if s.get("mode") == "Mandatory" and not override]
            for key in (*ALWAYS_REQUIRED, *required):
                if profile.get(key) in (None, "", []):
                    return f"profile.{key} is required"
        for key, value in profile.items():
            if value is None:
                if key in ALWAYS_REQUIRED:
                    return f"profile.{key} cannot be cleared"
                continue
            problem = self._check_value(key, value)
            if problem:
                return problem
        return None

    @staticmethod
    def _parse_groups(raw: Any, create: bool) -> list[tuple[str, str]] | str:
        if raw is None:
            return []
        if not isinstance(raw, list):
            return "groups must be a list"
        out: list[tuple[str, str]] = []
        for n, entry in enumerate(raw):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                return f"groups[{n}].name is required"
            action = entry.get("action", "add")
            if action not in ("add", "remove") or (create and action == "remove"):
                return f"groups[{n}].action must be {'add' if create else 'add or remove'}"
            out.append((entry["name"], action))
        return out

    @staticmethod
    def _uid(params: dict[str, Any]) -> str | None:
        uid = params.get("uid")
        return uid if isinstance(uid, str) and uid else None

    # ---- SetUser / status --------------------------------------------------------------
    async def _set_user(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        action = params.get("action")
        if action not in SET_USER_ACTIONS:
            return _error(400, f"params.action must be one of: {', '.join(SET_USER_ACTIONS)}")
        profile = body.get("profile", {} if action != "create" else None)
        if not isinstance(profile, dict):
            return _error(400, "profile object is required" if action == "create" else "profile must be an object")
        if action in ("activate", "deactivate"):
            profile = {}
        problem = self._check_profile(profile, action == "create", bool(params.get("override_mandatory_check")))
        if problem:
            return _error(400, problem)
        groups = self._parse_groups(body.get("groups") if action in ("create", "update") else None,
                                    action == "create")
        if isinstance(groups, str):
            return _error(400, groups)
        if action == "create":
            uid = profile["username"]
            held = self._canon(uid)
            if held in self.users or held in self._pending_creates:
                return _error(409, "username already in use")
            self._pending_creates[uid] = self._pending_creates.get(uid, 0) + 1
        else:
            found = self._uid(params)
            if found is None:
                return _error(400, "params.uid is required")
            uid = self._canon(found)
            if self._canon(profile.get("username", uid)) != uid:
                return _error(400, "profile.username cannot be changed")
            if uid not in self.users and uid not in self._pending_creates:
                return _error(404, "user not found")
        tid = str(self._next_tid)
        self._next_tid += 1
        stuck = self.status_stuck > 0 and self._rng.random() < self.status_stuck
        fail = not stuck and self.status_fail > 0 and self._rng.random() < self.status_fail
        if stuck:
            self._stuck.append(_Op(tid, time.monotonic() + self.status_stuck_for, action, uid, dict(profile),
                                   groups, True, stuck=True))
        else:
            self._ops.append(_Op(tid, time.monotonic() + self.status_delay, action, uid, dict(profile), groups, fail))
        self._statuses[tid] = (1, "")
        self.set_user_calls[action] = self.set_user_calls.get(action, 0) + 1
        self.settle()  # status_delay=0 means applied before we answer
        # Location carries no region prefix: the client appends it to its own base URL.
        return web.Response(status=202, headers={"Location": f"/status/{tid}"})

    # ---- user reads ------------------------------------------------------------------
    @staticmethod
    def _user_json(user: CivicaUser) -> dict[str, Any]:
        return {
            "groups": [{"name": g} for g in sorted(user.groups)],
            "params": {"uid": user.profile["username"]},
            "profile": {k: v for k, v in user.profile.items() if v not in (None, "", [])},
        }

    async def _get_user(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        uid = self._uid(params)
        if uid is None:
            return _error(400, "params.uid is required")
        user = self.users.get(self._canon(uid))
        return _error(404, "user not found") if user is None else json_response(self._user_json(user))

    async def _get_inactive_users(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        if parse_iso(params.get("date")) is None:
            return _error(400, "params.date is required and must be an ISO-8601 date")
        pos = 0
        if params.get("cursor") is not None:
            cur = _decode_cursor(params["cursor"], "inactive")
            if cur is None or not isinstance(cur.get("p"), int) or cur["p"] < 0:
                return _error(400, "invalid cursor")
            pos = cur["p"]
        # Nobody logs in to a simulator, so every user (active or not) is "inactive".
        out: list[dict[str, Any]] = []
        next_cursor: str | None = None
        for idx in range(pos, len(self._order)):
            user = self.users.get(self._order[idx])
            if user is None or user.seq != idx:  # deleted (or re-created later in the order)
                continue
            if len(out) == PAGE_SIZE:
                next_cursor = _encode_cursor({"k": "inactive", "p": idx})
                break
            out.append(self._user_json(user))
        return json_response({"users": out, "next_cursor": next_cursor})

    async def _get_modified_users(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        since = parse_iso(params.get("date"))
        if since is None:
            return _error(400, "params.date is required and must be an ISO-8601 date")
        users = [self._user_json(u) for u in self.users.values() if u.modified_at >= since]
        return json_response({"users": users})

    async def _get_profile_fields(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        return json_response(self.profile_fields)

    async def _delete_user(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        uid = self._uid(params)
        if uid is None:
            return _error(400, "params.uid is required")
        if self.users.pop(self._canon(uid), None) is None:
            return _error(404, "user not found")
        return json_response({})

    # ---- certificates ----------------------------------------------------------------
    async def _award_certificate(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        uid, ref = self._uid(params), params.get("ref")
        if uid is None:
            return _error(400, "params.uid is required")
        if not isinstance(ref, str) or not ref:
            return _error(400, "params.ref is required")
        cert = body.get("certification") or {}
        if not isinstance(cert, dict):
            return _error(400, "certification must be an object")
        awarded = parse_iso(cert["awardedDate"]) if cert.get("awardedDate") is not None else datetime.now(UTC)
        if awarded is None:
            return _error(400, "certification.awardedDate must be an ISO-8601 date")
        expiry = parse_iso(cert["expiryDate"]) if cert.get("expiryDate") is not None else None
        if cert.get("expiryDate") is not None and expiry is None:
            return _error(400, "certification.expiryDate must be an ISO-8601 date")
        score = cert.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            return _error(400, "certification.score must be a number")
        mode = str(cert.get("awardMode") or "manual").lower()
        if mode not in AWARD_MODES:
            return _error(400, "certification.awardMode must be one of: Manual, Award, Renew")
        uid = self._canon(uid)
        if uid not in self.users:
            return _error(404, "user not found")
        if ref not in self.certifications:
            return _error(404, "certification not found")
        if mode == "renew" and not any(a.username == uid and a.ref == ref for a in self.awards):
            return _error(400, "no earlier award to renew")
        seq = len(self.awards)
        # Not idempotent on purpose: a retried call records a second, identical award.
        self.awards.append(Award(uid, ref, dg.fmt_millis_z(awarded), dg.fmt_millis_z(expiry) if expiry else None,
                                 float(score) if score is not None else None, seq, mode))
        insort(self._award_index, (_ms(awarded), seq))
        self.award_calls += 1
        return json_response({})

    async def _get_users_certificates(self, body: dict[str, Any], params: dict[str, Any]) -> web.Response:
        start = parse_iso(params.get("from_date"))
        if start is None:
            return _error(400, "params.from_date is required and must be an ISO-8601 date")
        end = parse_iso(params["to_date"]) if params.get("to_date") is not None else None
        if params.get("to_date") is not None and end is None:
            return _error(400, "params.to_date must be an ISO-8601 date")
        f_ms, t_ms = _ms(start), (_ms(end) if end else None)
        index = self._award_index
        lo = bisect_left(index, (f_ms, -1))
        hi = bisect_left(index, (t_ms, -1)) if t_ms is not None else len(index)
        if params.get("cursor") is not None:
            cur = _decode_cursor(params["cursor"], "certs")
            after = cur.get("a") if cur else None
            if cur is None or not (isinstance(after, list) and len(after) == 2):
                return _error(400, "invalid cursor")
            if cur.get("f") != f_ms or cur.get("t") != t_ms:
                return _error(400, "cursor does not match from_date/to_date")
            lo = max(lo, bisect_right(index, (after[0], after[1])))
        page = index[lo : min(hi, lo + PAGE_SIZE)]
        rows = []
        for _, seq in page:
            a = self.awards[seq]
            rows.append({
                "awared_date": a.awarded_date,  # sic: the API's spelling
                "certificate_title": None,
                "certification_id": a.ref,
                "certification_title": self.certifications.get(a.ref),
                "score": a.score,
                "expiration_date": a.expiry_date,
                "username": a.username,
            })
        next_cursor = None
        if page and lo + len(page) < hi:
            next_cursor = _encode_cursor({"k": "certs", "f": f_ms, "t": t_ms, "a": list(page[-1])})
        return json_response({"certificates": rows, "next_cursor": next_cursor})
