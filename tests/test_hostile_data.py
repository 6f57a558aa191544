"""Hostile and malformed source data: each record is carried faithfully or dead-lettered with a precise reason.

The corpus is a Damstra tenant (JSONL rows as the simulator's ``data=`` loads them) full of things real
exports contain: unicode and emoji, right-to-left text, a 1 MB name, nulls and wrong types where values
are expected, impossible dates, duplicate natural keys, and names made of ``/ ? # % ..`` and spaces.
Every record has a stated fate below; the test checks each one against the ledger, the Civica
simulator's state and ``verify``. A second test proves ids always travel as one encoded path segment.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from migrator import api
from migrator.connectors import segment
from migrator.dates import normalize
from migrator.http import HostClient, HostLimits
from migrator.plan import load_plan
from migrator.platforms.civica.simulator import CivicaSimulator
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.server import RunningSim
from migrator.verify import verify
from tests.conftest import CIVICA_KEY, DAMSTRA_KEY, Sims, write_plan

BIG = "Ω" * (1 << 19)  # 512 Ki two-byte characters: a 1 MiB firstName
RTL_FIRST = "مُحَمَّد\u200f"  # Arabic with combining marks and a right-to-left mark
RTL_LAST = "שָׁלוֹם"
ODD_NAME = "a/b?c#d%20e .. f"


@dataclass
class Fate:
    """What must become of one source record."""

    state: str  # written | dead | skipped
    error_class: str | None = None
    says: tuple[str, ...] = ()  # fragments the dead letter's message (or skip reason) must contain
    one_of: tuple[str, ...] = field(default=())  # duplicates: the carried record is one of these


def carried() -> Fate:
    return Fate("written")


def dead(error_class: str, *says: str) -> Fate:
    return Fate("dead", error_class, says)


def user(uid: Any, name: Any, first: Any = "Ann", last: Any = "Lee", **extra: Any) -> dict[str, Any]:
    row = {"kind": "user", "id": uid, "userName": name, "firstName": first, "lastName": last,
           "emailAddress": f"{name}@example.org" if isinstance(name, str) else None, "employeeNumber": None,
           "clientStatusId": 56, "active": True, "groups": [], "timeZone": "Australia/Perth"}
    row.update(extra)
    return row


def sched(sid: Any, uid: Any, lesson: Any, completed: Any) -> dict[str, Any]:
    return {"kind": "schedule", "id": sid, "userId": uid, "lessonId": lesson, "lessonName": f"Lesson {lesson}",
            "status": "completed", "statusId": 94, "lessonCompletedDate": completed}


def corpus() -> tuple[list[dict[str, Any]], dict[tuple[str, str], Fate]]:
    rows: list[dict[str, Any]] = []
    fates: dict[tuple[str, str], Fate] = {}

    def add(row: dict[str, Any], stream: str, fate: Fate) -> None:
        rows.append(row)
        fates[(stream, str(row["id"]))] = fate

    # ---- groups
    g = lambda gid, name: {"kind": "group", "id": gid, "name": name, "description": "", "clientId": 1}  # noqa: E731
    add(g(1, "Crew / Night shift?"), "groups", carried())
    add(g(2, "R&D #1 100% .."), "groups", carried())
    add(g(3, "فريق السلامة"), "groups", carried())
    add(g(4, "🚒 Fire crew 👩🏽‍🚒"), "groups", carried())
    add(g(5, ""), "groups", dead("missing_field", "name"))
    add(g(6, None), "groups", dead("malformed_record", "name"))
    add(g("7", "String id"), "groups", dead("malformed_record", "id"))
    add(g(8, "../admin a/b?c#d"), "groups", carried())
    for gid in range(9, 40):  # plain groups, so the listing has a few pages
        add(g(gid, f"Team {gid:02d}"), "groups", carried())
    add(g(40, "Late group ✨"), "groups", carried())
    rows.append({"kind": "lesson", "lessonId": 101, "lessonVersionId": 5001, "name": "Fire 🔥 safety", "status": "active"})

    # ---- users
    ref = lambda *ids: [{"id": i} for i in ids]  # noqa: E731
    add(user(101, "zoë.ø", "Zoë 🎉", "Øverby-名", emailAddress="zoë@exämple.org", groups=ref(1, 4),
             employeeNumber="E-ü-1"), "users", carried())
    add(user(102, "rtl.user", RTL_FIRST, RTL_LAST, groups=ref(3)), "users", carried())
    add(user(103, "big.name", BIG, "Big", groups=ref(2)), "users", carried())
    add(user(104, "null.first", None), "users", dead("missing_field", "Civica requires profile.forename"))
    add(user(105, "null.mail", emailAddress=None), "users", carried())
    add(user(106, "null.groups", groups=None), "users", carried())
    add(user("107", "string.id"), "users", dead("malformed_record", "id"))
    add(user(108, "number.first", 42), "users", dead("malformed_record", "firstName"))
    add(user(109, "string.groups", groups="admins"), "users", dead("malformed_record", "groups"))
    # same userName twice: the first in source order is carried, the second names it (even though the
    # first waits for its group, on the last groups page, while the second has nothing to wait for)
    add(user(110, "dup.user", "First", groups=ref(40)), "users", carried())
    add(user(111, "dup.user", "Second", groups=None), "users", dead("duplicate_natural_key", "110"))
    add(user(112, ODD_NAME, groups=ref(8)), "users", carried())
    add(user(113, "../admin", "Dot", "Dot"), "users", carried())
    add(user(114, "first last", "Siobhán", "O'Brien-Ó Súilleabháin", emailAddress="first last@example.org"),
        "users", carried())
    add(user(115, "in.dead.group", groups=ref(5)), "users", dead("missing_dependency", "groups 5"))
    add(user(116, "empty.last", last=""), "users", dead("missing_field", "Civica requires profile.surname"))
    add(user(117, "number.employee", employeeNumber=12345), "users", dead("malformed_record", "employeeNumber"))
    add(user(118, "inactive.émoji", "😀", "🙃", clientStatusId=57, active=False, groups=ref(4)), "users", carried())
    add(user(119, None), "users", dead("missing_field", "userName"))
    add(user(120, "ghost.group", groups=ref(99)), "users", dead("missing_dependency", "groups 99"))
    add(user(121, "string.id.group", groups=ref(7)), "users", dead("missing_dependency", "groups 7"))

    # ---- completed lesson schedules (read per user; certificates in Civica)
    add(sched(5001, 101, 101, "2021-03-04T05:06:07.000Z"), "certificates", carried())
    add(sched(5002, 102, 102, "2021-02-30T10:00:00Z"), "certificates", dead("invalid_value", "'2021-02-30T10:00:00Z'"))
    add(sched(5003, 102, 103, "not a date"), "certificates", dead("invalid_value", "'not a date'"))
    # one completion, twice (the second spelled with a +0000 offset): carried once, the other names it
    add(sched(5004, 101, 104, "2022-05-06T07:08:09Z"), "certificates", Fate("written", one_of=("5004", "5005")))
    add(sched(5005, 101, 104, "2022-05-06T07:08:09+0000"), "certificates", Fate("written", one_of=("5004", "5005")))
    add(sched(5006, 104, 101, "2021-01-01T00:00:00Z"), "certificates", dead("missing_dependency", "users 104"))
    add(sched(5007, 108, 101, "2021-01-01T00:00:00Z"), "certificates", dead("missing_dependency", "users 108"))
    add(sched(5008, 112, 106, "2021-06-01T23:30:00-05:00"), "certificates", carried())
    add(sched(5009, 103, 101, None), "certificates", dead("missing_field", "lessonCompletedDate"))
    add(sched(5010, 113, "101", "2021-01-01T00:00:00Z"), "certificates", dead("malformed_record", "lessonId"))
    add(sched(5011, 113, 130, "2021-01-01T00:00:00Z"), "certificates",
        Fate("skipped", says=("lesson 130 has no certification",)))
    add(sched(5012, 110, 105, "2023-07-08T09:10:11.123Z"), "certificates", carried())
    add(sched(5013, 111, 107, "2023-07-08T09:10:11Z"), "certificates", dead("missing_dependency", "users 111"))
    add(sched(5014, 118, 108, "2020-01-01 08:00:00"), "certificates", carried())
    add(sched(5015, 109, 101, "2021-01-01T00:00:00Z"), "certificates", dead("missing_dependency", "users 109"))
    add(sched(5016, 114, 109, "2021-12-31T23:59:59.999+14:00"), "certificates", carried())
    return rows, fates


def _by_id(rows: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in rows if r["kind"] == kind}


def _ledger(folder: Path) -> tuple[dict[tuple[str, str], tuple[str, str | None]], dict[tuple[str, str], tuple]]:
    db = sqlite3.connect(folder / "ledger.sqlite")
    try:
        records = {(s, i): (st, reason) for s, i, st, reason in
                   db.execute("SELECT stream, source_id, state, reason FROM records")}
        letters = {(s, i): (cls, msg, status, payload) for s, i, cls, msg, status, payload in
                   db.execute("SELECT stream, source_id, error_class, message, status, payload FROM dead_letters")}
        return records, letters
    finally:
        db.close()


async def test_hostile_corpus_is_carried_faithfully_or_dead_lettered_precisely(tmp_path: Path) -> None:
    rows, fates = corpus()
    data = tmp_path / "hostile.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert data.stat().st_size > 1_000_000

    # small pages and a little latency: records trickle in, so parents and children interleave
    damstra = DamstraSimulator(access_key=DAMSTRA_KEY, data=data, faults="latency=5ms")
    civica = CivicaSimulator(api_key=CIVICA_KEY, status_delay=0.02)
    with RunningSim(damstra) as d, RunningSim(civica) as c:
        sims = Sims(d, c)
        plan_path = write_plan(tmp_path / "run", sims)
        plan_path.write_text(plan_path.read_text().replace("[source.limits]", "page_size = 6\n[source.limits]", 1))
        plan = load_plan(plan_path)
        report = await api.run(plan)
        records, letters = _ledger(tmp_path / "run")

        # 1. every source record has settled, each with the fate stated for it
        assert set(records) == set(fates), sorted(set(records) ^ set(fates))
        # duplicate completions: exactly one carried, the other dead-lettered naming it
        pair = [("certificates", "5004"), ("certificates", "5005")]
        assert sorted(records[k][0] for k in pair) == ["dead", "written"], {k: records[k] for k in pair}
        loser = next(k for k in pair if records[k][0] == "dead")
        winner = next(k for k in pair if records[k][0] == "written")
        cls, message, _, _ = letters.pop(loser)
        assert cls == "duplicate_natural_key" and winner[1] in message, (cls, message)

        for key, fate in fates.items():
            if fate.one_of:
                continue
            state, reason = records[key]
            assert state == fate.state, (key, state, reason, letters.get(key))
            if fate.state == "dead":
                cls, message, _status, payload = letters[key]
                assert cls == fate.error_class, (key, cls, message)
                for fragment in fate.says:
                    assert fragment in message, (key, fragment, message)
                assert payload, key  # something to act on
            elif fate.state == "skipped":
                assert all(f in (reason or "") for f in fate.says), (key, reason)
        assert {k for k, f in fates.items() if f.state == "dead"} == set(letters), "unexpected dead letters"

        # 2. Civica holds exactly the carried users, field for field, and the carried awards once each
        state = sims.civica_state()
        users, groups = _by_id(rows, "user"), _by_id(rows, "group")
        written_users = {sid for (stream, sid), (st, _) in records.items() if stream == "users" and st == "written"}
        expected_users: dict[str, Any] = {}
        for sid in written_users:
            u = users[sid]
            profile = {"username": u["userName"], "forename": u["firstName"], "surname": u["lastName"],
                       "timezone": u["timeZone"]}
            if u.get("emailAddress"):
                profile["mail"] = u["emailAddress"]
            if u.get("employeeNumber"):
                profile["employee_number"] = u["employeeNumber"]
            names = {groups[str(ref["id"])]["name"] for ref in u.get("groups") or []}
            expected_users[u["userName"]] = (profile, names, u["clientStatusId"] != 57)
        assert set(state["users"]) == set(expected_users)
        for name, (profile, names, active) in expected_users.items():
            got_profile, got_groups, got_active = state["users"][name]
            assert got_profile == profile, name if name != "big.name" else "the 1 MB firstName was altered"
            assert (got_groups, got_active) == (names, active), name
        assert state["users"]["big.name"][0]["forename"] == BIG
        assert state["users"]["rtl.user"][0]["forename"] == RTL_FIRST
        assert state["users"]["dup.user"][0]["forename"] == "First"

        schedules = _by_id(rows, "schedule")
        expected_awards = set()
        for (stream, sid), (st, _) in records.items():
            if stream == "certificates" and st == "written":
                s = schedules[sid]
                expected_awards.add((users[str(s["userId"])]["userName"], f"CERT-{s['lessonId']}",
                                     normalize(s["lessonCompletedDate"], "d")))
        assert sorted(state["awards"]) == sorted(expected_awards)  # each once
        assert (ODD_NAME, "CERT-106", "2021-06-02T04:30:00.000Z") in expected_awards
        assert ("first last", "CERT-109", "2021-12-31T09:59:59.999Z") in expected_awards
        assert state["duplicate_awards"] == 0

        # 3. the report adds up and verify, reading both sides afresh, agrees
        totals = report["totals"]
        assert totals["read"] == len(fates)
        assert totals["dead_lettered"] == sum(1 for f in fates.values() if f.state == "dead") + 1  # + the duplicate
        result = await verify(plan)
        assert result["ok"], result


# ------------------------------------------------------------------------------------- path segments
HOSTILE_IDS = [
    "../group", "..", ".", "...", "a/b?c#d", "%2e%2e", "%2F", "100%", "a b", " ", "../../_sim/rotate_key",
    "é/ü", "x?startIndex=0", "#frag", "a\\b", "a;b", "tab\there", "1/../../../etc/passwd", "🚒/..",
]


async def test_ids_travel_as_one_encoded_segment_and_reach_only_their_route() -> None:
    hits: list[tuple[str, str, dict[str, str], dict[str, str]]] = []

    def recorder(route: str):
        async def handle(request: web.Request) -> web.Response:
            hits.append((route, request.raw_path, dict(request.match_info), dict(request.query)))
            return web.json_response({"results": []}, status=200 if route == "schedules" else 404)

        return handle

    app = web.Application()
    app.router.add_get("/api/v2/user/{user_id}/lesson_schedule", recorder("schedules"))
    app.router.add_get("/api/v2/group", recorder("groups"))
    app.router.add_get("/api/v2/user/{user_id}", recorder("user"))
    app.router.add_route("*", "/{anything:.*}", recorder("elsewhere"))

    with RunningSim(app) as sim:
        async with HostClient(f"{sim.url}/api/v2", limits=HostLimits(rate=1000, max_retries=0)) as client:
            # a control: an id that is NOT encoded does reach another route, so the recorder would notice
            await client.request("GET", "/user/a/b/lesson_schedule", accept=(200, 404))
            assert [h[0] for h in hits] == ["elsewhere"]
            hits.clear()

            for value in HOSTILE_IDS:
                seg = segment(value)
                assert "/" not in seg and "?" not in seg and "#" not in seg and seg.strip(".") != "", (value, seg)
                await client.request("GET", f"/user/{seg}/lesson_schedule", params={"status": value})
                assert len(hits) == 1, (value, hits)
                route, raw_path, match, query = hits.pop()
                assert route == "schedules", (value, route, raw_path)
                assert raw_path.split("?")[0] == f"/api/v2/user/{seg}/lesson_schedule", (value, raw_path)
                assert match == {"user_id": value}, (value, match)  # decoded back to exactly the id
                assert query == {"status": value}, (value, query)  # query values cannot escape either


# ------------------------------------------------------------------------------- quiet fidelity choices
UNKNOWN_STATUS_MESSAGE = (
    "clientStatusId 99 is not a status Damstra documents (56 Active, 57 Not Current); set"
    ' source.unknown_status = "active" or "inactive" to carry such users'
)


def status_tenant() -> list[dict[str, Any]]:
    """Three users: Active, Not Current and a status the doc does not define, each with one completion.

    The odd one says `active: true`: a guess from that flag would carry it as active without a word."""
    group = {"kind": "group", "id": 1, "name": "Crew", "description": "", "clientId": 1}
    return [
        group,
        user(201, "known.active", groups=[{"id": 1}]),
        user(202, "odd.status", clientStatusId=99, active=True, groups=[{"id": 1}]),
        user(203, "not.current", clientStatusId=57, active=False, groups=[{"id": 1}]),
        sched(6001, 201, 101, "2022-01-02T03:04:05Z"),
        sched(6002, 202, 102, "2022-01-02T03:04:05Z"),
        sched(6003, 203, 103, "2022-01-02T03:04:05Z"),
    ]


def tenant(rows: list[dict[str, Any]]) -> tuple[RunningSim, RunningSim]:
    return (RunningSim(DamstraSimulator(access_key=DAMSTRA_KEY, data=rows)),
            RunningSim(CivicaSimulator(api_key=CIVICA_KEY, status_delay=0.02)))


async def migrate(tmp_path: Path, sims: Sims, source_option: str = "") -> dict[str, Any]:
    plan_path = write_plan(tmp_path, sims)
    if source_option:
        plan_path.write_text(plan_path.read_text().replace("[source.limits]", f"{source_option}\n[source.limits]", 1))
    return await api.run(load_plan(plan_path))


async def test_an_undocumented_client_status_is_dead_lettered_naming_the_value_and_the_option(tmp_path: Path) -> None:
    d, c = tenant(status_tenant())
    with d, c:
        sims = Sims(d, c)
        report = await migrate(tmp_path, sims)
        state = sims.civica_state()
    records, letters = _ledger(tmp_path)

    assert records[("users", "202")][0] == "dead"
    cls, message, _status, payload = letters[("users", "202")]
    assert (cls, message) == ("unknown_value", UNKNOWN_STATUS_MESSAGE)
    assert payload  # the native record is kept, to re-drive after choosing
    # its completion cannot be awarded without it: dead as missing_dependency, as for any dead parent
    assert records[("certificates", "6002")][0] == "dead"
    assert letters[("certificates", "6002")][0] == "missing_dependency"
    assert set(letters) == {("users", "202"), ("certificates", "6002")}

    # the documented statuses are carried as they are; the odd user is not in Civica at all
    assert {name: active for name, (_p, _g, active) in state["users"].items()} == {
        "known.active": True, "not.current": False
    }
    assert sorted(a[0] for a in state["awards"]) == ["known.active", "not.current"]
    assert report["streams"]["users"]["dead_lettered"] == 1
    assert report["streams"]["certificates"]["dead_lettered"] == 1


@pytest.mark.parametrize("choice", ["active", "inactive"])
async def test_the_plan_decides_how_an_undocumented_client_status_is_carried(tmp_path: Path, choice: str) -> None:
    d, c = tenant(status_tenant())
    with d, c:
        sims = Sims(d, c)
        report = await migrate(tmp_path, sims, f'unknown_status = "{choice}"')
        state = sims.civica_state()
    records, letters = _ledger(tmp_path)

    assert letters == {}
    assert records[("users", "202")][0] == "written"
    profile, groups, active = state["users"]["odd.status"]
    assert (profile["forename"], groups, active) == ("Ann", {"Crew"}, choice == "active")
    # the documented ones do not follow the option
    assert state["users"]["known.active"][2] is True and state["users"]["not.current"][2] is False
    assert sorted(a[0] for a in state["awards"]) == ["known.active", "not.current", "odd.status"]
    assert report["totals"]["dead_lettered"] == 0


def test_after_choosing_a_status_the_dead_letters_are_re_driven(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fix the message names works: set the option, `migrator dlq retry`, the user and its completion arrive once."""
    from migrator.cli import main

    d, c = tenant(status_tenant())
    with d, c:
        sims = Sims(d, c)
        plan_path = write_plan(tmp_path, sims)
        assert main(["run", str(plan_path), "--quiet"]) in (0, 1)  # finished; 1 once dead letters mean incomplete
        assert "odd.status" not in sims.civica_state()["users"]

        plan_path.write_text(plan_path.read_text().replace("[source.limits]", 'unknown_status = "inactive"\n[source.limits]', 1))
        capsys.readouterr()
        assert main(["dlq", "retry", str(plan_path), "--quiet"]) == 0, capsys.readouterr()
        state = sims.civica_state()

    records, letters = _ledger(tmp_path)
    assert letters == {} and {st for st, _ in records.values()} == {"written"}
    assert state["users"]["odd.status"][2] is False
    assert sorted(a[0] for a in state["awards"]) == ["known.active", "not.current", "odd.status"]  # each once
    assert state["set_user_calls"]["create"] == 3, state["set_user_calls"]  # each user created once


async def test_fields_that_are_not_carried_are_reported_with_their_record_counts(tmp_path: Path) -> None:
    ref = lambda *ids: [{"id": i} for i in ids]  # noqa: E731
    rows: list[dict[str, Any]] = [
        {"kind": "group", "id": 1, "name": "Crew", "description": "", "clientId": 1},
        {"kind": "group", "id": 2, "name": "Office", "description": "", "clientId": 1},
        # trainees: their roles are dropped too (the user model has none), nothing supervised
        user(301, "trainee.a", roles=[6], groupsSupervised=[], groups=ref(1)),
        user(302, "trainee.b", roles=[6], groups=ref(1)),
        # supervisors
        user(303, "super.a", roles=[5, 6], groupsSupervised=ref(1), groups=ref(1)),
        user(304, "super.b", roles=[5], groupsSupervised=ref(1, 2), groups=ref(2)),
        # nothing to lose: no roles field, empty roles
        user(305, "plain.a"),
        user(306, "plain.b", roles=[], groupsSupervised=[]),
        # dead-lettered (Civica needs a surname): never carried, so nothing of it is counted as lost
        user(307, "super.dead", last="", roles=[5, 6], groupsSupervised=ref(2)),
        # completions: one recorded by the trainee, one by an admin on her behalf, one with no recorder
        {**sched(7001, 301, 101, "2021-01-01T00:00:00Z"), "lessonCompletedBy": 301},
        {**sched(7002, 303, 101, "2021-01-01T00:00:00Z"), "lessonCompletedBy": 999},
        sched(7003, 305, 101, "2021-01-01T00:00:00Z"),
    ]
    d, c = tenant(rows)
    with d, c:
        sims = Sims(d, c)
        report = await migrate(tmp_path, sims)
        state = sims.civica_state()

    assert set(state["users"]) == {"trainee.a", "trainee.b", "super.a", "super.b", "plain.a", "plain.b"}
    lost = {(loss["stream"], loss["field"]): loss for loss in report["fidelity_losses"]}
    assert lost[("users", "roles")]["records"] == 4
    assert lost[("users", "groupsSupervised")]["records"] == 2
    assert lost[("certificates", "lessonCompletedBy")]["records"] == 1
    assert "roles" in lost[("users", "roles")]["reason"]
    assert "supervise" in lost[("users", "groupsSupervised")]["reason"]
    assert "behalf" in lost[("certificates", "lessonCompletedBy")]["reason"]


@pytest.mark.parametrize(
    "sims", [{"damstra": {"records": 200, "seed": 3, "unknown_status_share": 0.05}}], indirect=True
)
async def test_generated_supervisors_and_unknown_statuses_are_accounted_for(sims: Sims, tmp_path: Path) -> None:
    """The simulator's generator, at its option: every undocumented status dead-lettered with its
    completions, every carried supervisor counted as a loss."""
    data = sims.damstra.sim.data
    generated = [data.user(i) for i in range(len(data))]
    odd = {str(u["id"]) for u in generated if u["clientStatusId"] == 99}
    supervisors = {str(u["id"]) for u in generated if u["groupsSupervised"]}
    assert odd and supervisors - odd  # the seed gives both, and some supervisors are carried

    report = await api.run(load_plan(write_plan(tmp_path, sims)))
    records, letters = _ledger(tmp_path)

    dead_users = {sid for (stream, sid), (st, _) in records.items() if stream == "users" and st == "dead"}
    assert dead_users == odd
    assert all(letters[("users", sid)][:2] == ("unknown_value", UNKNOWN_STATUS_MESSAGE)
               for sid in odd)
    dead_certs = [v for (stream, _), v in letters.items() if stream == "certificates"]
    assert dead_certs and all(cls == "missing_dependency" for cls, *_ in dead_certs)

    carried = {str(u["id"]) for u in generated} - odd
    lost = {(loss["stream"], loss["field"]): loss["records"] for loss in report["fidelity_losses"]}
    assert lost[("users", "roles")] == len(carried)  # every generated user holds a role
    assert lost[("users", "groupsSupervised")] == len(supervisors - odd)
    assert set(sims.civica_state()["users"]) == {u["userName"] for u in generated if str(u["id"]) in carried}
