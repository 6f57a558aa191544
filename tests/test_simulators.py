"""Simulator behaviour over real loopback HTTP (aiohttp client against RunningSim)."""

from __future__ import annotations

import asyncio
import time
from bisect import insort
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from migrator.platforms.civica.simulator import Award, CivicaSimulator, CivicaUser, parse_iso
from migrator.platforms.damstra.simulator import DamstraSimulator
from migrator.simulate.datagen import SparseMarks
from migrator.simulate.faults import FaultSpec
from migrator.simulate.server import RunningSim, serve

DKEY = {"AccessKey": "damstra-demo-key"}
CAUTH = {"Authorization": aiohttp.encode_basic_auth("demo.learning-admin.com", "civica-demo-key")}


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None), r.headers


async def rpc(
    sim: RunningSim, api: str, body: Any, prefix: str = "", auth: dict[str, str] | None = CAUTH
) -> tuple[int, Any, Any]:
    return await fetch("POST", f"{sim.url}{prefix}/{api}", json=body, headers=auth or {})


def create_body(username: str, **profile: Any) -> dict[str, Any]:
    return {"params": {"action": "create"},
            "profile": {"username": username, "forename": "Ann", "surname": "Lee", **profile},
            "groups": [{"name": "Sales"}]}


@pytest.fixture
def damstra() -> Iterator[RunningSim]:
    with RunningSim(DamstraSimulator(records=250, seed=3)) as sim:
        yield sim


@pytest.fixture
def civica() -> Iterator[RunningSim]:
    with RunningSim(CivicaSimulator(status_delay=0.0)) as sim:
        yield sim


# ---------------------------------------------------------------- shared machinery
def test_fault_spec_parse() -> None:
    spec = FaultSpec.parse("500=0.05,502=0.01,503=0.01,drop=0.01,truncate=0.01,latency=50ms,after=0.5,seed=7")
    assert spec.statuses == {500: 0.05, 502: 0.01, 503: 0.01}
    assert (spec.drop, spec.truncate, spec.after, spec.seed) == (0.01, 0.01, 0.5, 7)
    assert spec.latency == pytest.approx(0.05)
    assert FaultSpec.parse("latency=2s").latency == 2.0
    assert FaultSpec.parse("").total() == 0.0
    slow = FaultSpec.parse("slow=0.25,slow_delay=1500ms,500=0.1")
    assert (slow.slow, slow.slow_delay, slow.total()) == (0.25, 1.5, pytest.approx(0.35))
    assert FaultSpec.parse("slow=1").slow_delay == 3.0  # the default delay
    assert FaultSpec.parse("badjson=0.1,truncate=0.1").total() == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("501=0.1", "'501'"), ("boom=1", "'boom'"), ("drop", "'drop'"), ("500=abc", "not a number"),
     ("drop=1.5", "probability"), ("latency=fast", "duration"), ("500=0.6,drop=0.6", "add up"),
     ("seed=x", "integer"), ("slow=lots", "slow='lots' is not a number"), ("slow=2", "slow='2' must be"),
     ("slow_delay=soon", "slow_delay='soon' is not a duration"), ("slow_delay=-1s", "slow_delay='-1s' must not"),
     ("slow=0.6,500=0.5", "add up"), ("slowness=1", "'slowness'")],
)
def test_fault_spec_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        FaultSpec.parse(text)
    assert fragment in str(err.value)
    if "unknown key" in str(err.value):
        assert "valid keys: 500, 502, 503, 504, drop, truncate, badjson, slow, slow_delay, latency, after, seed" in str(err.value)


async def test_serve_runs_until_cancelled() -> None:
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(serve(CivicaSimulator(), port=0, on_ready=ready.put_nowait))
    url = await asyncio.wait_for(ready.get(), 5)
    assert url.startswith("http://127.0.0.1:")
    status, body, _ = await fetch("GET", f"{url}/_sim/stats")
    assert status == 200 and body["users"] == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ValueError):
        RunningSim(CivicaSimulator(), host="0.0.0.0")


def test_sparse_marks_match_brute_force() -> None:
    for n in (0, 1, 9, 10, 11, 97, 1000):
        marks = SparseMarks(n, seed=5, kind="x")
        marked = [i for i in range(n) if marks.is_marked(i)]
        assert list(marks.marked_view()) == marked
        assert list(marks.unmarked_view()) == [i for i in range(n) if not marks.is_marked(i)]


async def test_rate_limit_seconds_and_stats() -> None:
    with RunningSim(DamstraSimulator(records=10, rate=1, burst=2)) as sim:
        statuses = [(await fetch("GET", f"{sim.url}/api/v2/lesson", headers=DKEY))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        status, body, headers = await fetch("GET", f"{sim.url}/api/v2/lesson", headers=DKEY)
        assert status == 429 and body == {"internalCode": 429, "error": "Too Many Requests"}
        assert int(headers["Retry-After"]) >= 1
        # /_sim is neither limited nor counted.
        status, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        assert status == 200 and stats["requests"] == 4 and stats["by_status"] == {"200": 2, "429": 2}
        times = sim.call(lambda: list(sim.sim.stats.request_times))  # type: ignore[attr-defined]
        assert len(times) == 4 and times == sorted(times)
        # A different credential has its own bucket.
        assert (await fetch("GET", f"{sim.url}/api/v2/lesson", headers={"AccessKey": "other"}))[0] == 401


async def test_rate_limit_date_and_none_forms() -> None:
    with RunningSim(CivicaSimulator(rate=0.5, retry_after="date")) as sim:
        await rpc(sim, "GetProfileFields", {})
        status, body, headers = await rpc(sim, "GetProfileFields", {})
        assert status == 429 and body == {"message": "Too Many Requests"}
        when = parsedate_to_datetime(headers["Retry-After"])
        assert when.timestamp() > time.time()
    with RunningSim(CivicaSimulator(rate=0.5, retry_after="none")) as sim:
        await rpc(sim, "GetProfileFields", {})
        status, _, headers = await rpc(sim, "GetProfileFields", {})
        assert status == 429 and "Retry-After" not in headers


async def test_drop_disconnects_client() -> None:
    with RunningSim(DamstraSimulator(records=10, faults="drop=1")) as sim:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)
        _, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        # aiohttp's client silently retries an idempotent GET once on a dropped connection.
        assert stats["faults"]["drop"] == stats["requests"] >= 1 and stats["by_status"] == {}


async def test_truncate_gives_payload_error() -> None:
    with RunningSim(DamstraSimulator(records=10, faults="truncate=1")) as sim:
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)


async def test_badjson_is_complete_but_does_not_parse() -> None:
    with RunningSim(DamstraSimulator(records=10, faults="badjson=1")) as sim:
        async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/api/v2/user", headers=DKEY) as r:
            raw = await r.read()  # no payload error: the framing is honest
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
            assert int(r.headers["Content-Length"]) == len(raw) > 0
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    sim_obj = CivicaSimulator(status_delay=0.0, faults="badjson=1")
    with RunningSim(sim_obj) as sim:
        async with aiohttp.ClientSession() as s, s.post(f"{sim.url}/SetUser", json=create_body("g"), headers=CAUTH) as r:
            assert r.status == 202 and r.headers["Location"].startswith("/status/")  # served, headers intact
        assert sim.call(lambda: "g" in sim_obj.users)


async def test_injected_5xx_uses_platform_body() -> None:
    with RunningSim(DamstraSimulator(records=10, faults="503=1")) as sim:
        status, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)
        assert status == 503 and body["internalCode"] == 503
    with RunningSim(DamstraSimulator(records=10, faults="500=1,latency=150ms")) as sim:
        t0 = time.monotonic()
        status, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)
        assert status == 500 and body == {"internalCode": 500, "error": "Internal Server Error"}
        assert time.monotonic() - t0 >= 0.15


async def test_fault_before_write_is_not_applied() -> None:
    sim_obj = CivicaSimulator(status_delay=0.0, faults="500=1,after=0,seed=1")
    with RunningSim(sim_obj) as sim:
        sim.call(sim_obj._insert, CivicaUser(profile={"username": "u1", "forename": "A", "surname": "B"}))
        status, _, _ = await rpc(sim, "AwardCertificate", {"params": {"uid": "u1", "ref": "CERT-101"}})
        assert status == 500
        assert sim.call(lambda: len(sim_obj.awards)) == 0


async def test_fault_after_write_is_applied_anyway() -> None:
    sim_obj = CivicaSimulator(status_delay=0.0, faults="500=1,after=1,seed=1")
    with RunningSim(sim_obj) as sim:
        # Reads are never "after": GetUser fails before doing anything.
        assert (await rpc(sim, "GetUser", {"params": {"uid": "x"}}))[0] == 500
        status, body, _ = await rpc(sim, "SetUser", create_body("ghost"))
        assert status == 500 and body == {"message": "Internal Server Error"}
        assert "ghost" in sim.call(lambda: dict(sim_obj.users))  # the client cannot know this
        status, _, _ = await rpc(sim, "AwardCertificate", {"params": {"uid": "ghost", "ref": "CERT-101"}})
        assert status == 500
        assert sim.call(lambda: len(sim_obj.awards)) == 1
    sim_obj = CivicaSimulator(status_delay=0.0, faults="drop=1,after=1")
    with RunningSim(sim_obj) as sim:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await rpc(sim, "SetUser", create_body("dropped"))
        assert sim.call(lambda: "dropped" in sim_obj.users)


# ---------------------------------------------------------------- Damstra
async def test_damstra_auth(damstra: RunningSim) -> None:
    expected = {"message": "AccessKey does not exist", "reason": "Invalid access key", "internalCode": 806,
                "error": "Invalid security token"}
    for headers in ({}, {"AccessKey": "nope"}):
        status, body, _ = await fetch("GET", f"{damstra.url}/api/v2/user", headers=headers)
        assert status == 401 and body == expected
    status, _, _ = await fetch("GET", f"{damstra.url}/api/v2/user", headers={"accesskey": "damstra-demo-key"})
    assert status == 200
    # Key rotation invalidates the old key at once.
    await fetch("POST", f"{damstra.url}/_sim/rotate_key", json={"access_key": "fresh"})
    assert (await fetch("GET", f"{damstra.url}/api/v2/user", headers=DKEY))[0] == 401
    assert (await fetch("GET", f"{damstra.url}/api/v2/user", headers={"AccessKey": "fresh"}))[0] == 200


async def test_damstra_paging_envelope_and_clamp(damstra: RunningSim) -> None:
    url = f"{damstra.url}/api/v2/user"
    _, body, _ = await fetch("GET", url, headers=DKEY, params={"activeValue": "all"})
    assert len(body["results"]) == 20
    assert body["meta"] == {"totalResultCount": 250, "startIndex": 0, "endIndex": 20}
    _, body, _ = await fetch("GET", url + "/", headers=DKEY, params={"activeValue": "all", "maxResults": "500"})
    assert len(body["results"]) == 100 and body["meta"]["endIndex"] == 100
    _, body, _ = await fetch("GET", url, headers=DKEY,
                             params={"activeValue": "all", "startIndex": "240", "maxResults": "50"})
    assert [u["id"] for u in body["results"]] == list(range(1240, 1250))
    assert body["meta"] == {"totalResultCount": 250, "startIndex": 240, "endIndex": 250}
    _, body, _ = await fetch("GET", url, headers=DKEY, params={"activeValue": "all", "startIndex": "999"})
    assert body["results"] == [] and body["meta"]["endIndex"] == 999
    status, body, _ = await fetch("GET", url, headers=DKEY, params={"startIndex": "x"})
    assert status == 400


async def test_damstra_active_filter_default(damstra: RunningSim) -> None:
    url = f"{damstra.url}/api/v2/user"
    counts = {}
    for value in (None, "active", "inactive", "all"):
        params = {"maxResults": "100"} | ({"activeValue": value} if value else {})
        _, body, _ = await fetch("GET", url, headers=DKEY, params=params)
        counts[value] = body["meta"]["totalResultCount"]
        if value in (None, "active"):
            assert all(u["active"] and u["clientStatusId"] == 56 for u in body["results"])
        if value == "inactive":
            assert all(not u["active"] and u["clientStatusId"] == 57 for u in body["results"])
    assert counts[None] == counts["active"] == 225
    assert counts["active"] + counts["inactive"] == counts["all"] == 250


async def test_damstra_user_shape_and_filters(damstra: RunningSim) -> None:
    _, user, _ = await fetch("GET", f"{damstra.url}/api/v2/user/1007", headers=DKEY)
    assert user["userName"] == "user0000007" and user["emailAddress"] == "user0000007@example.org"
    assert user["roles"] == [6] and user["clientId"] == 1 and user["createdDate"].endswith("+0000")
    _, groups, _ = await fetch("GET", f"{damstra.url}/api/v2/group", headers=DKEY, params={"maxResults": "100"})
    gids = {g["id"] for g in groups["results"]}
    assert groups["meta"]["totalResultCount"] == 3 and all(g["id"] in gids for g in user["groups"])
    assert len({g["name"] for g in groups["results"]}) == 3
    _, found, _ = await fetch("GET", f"{damstra.url}/api/v2/user", headers=DKEY,
                              params={"emailAddress": "user0000007@example.org", "activeValue": "all"})
    assert [u["id"] for u in found["results"]] == [1007]
    _, found, _ = await fetch("GET", f"{damstra.url}/api/v2/user", headers=DKEY,
                              params={"q": user["lastName"].lower(), "activeValue": "all", "maxResults": "100"})
    assert 1007 in [u["id"] for u in found["results"]]
    assert (await fetch("GET", f"{damstra.url}/api/v2/user/99999", headers=DKEY))[0] == 404
    status, body, _ = await fetch("GET", f"{damstra.url}/api/v2/group/77", headers=DKEY)
    assert status == 404 and body["statusCode"] == 404
    _, members, _ = await fetch("GET", f"{damstra.url}/api/v2/group/1/member", headers=DKEY,
                                params={"maxResults": "100"})
    assert all({"id": 1} in m["groups"] for m in members["results"])


async def test_damstra_lesson_schedules(damstra: RunningSim) -> None:
    seen_completed = 0
    for uid in range(1000, 1030):
        status, body, _ = await fetch("GET", f"{damstra.url}/api/v2/user/{uid}/lesson_schedule", headers=DKEY,
                                      params={"maxResults": "10"})
        assert status == 200 and set(body) == {"results"}  # S2: no meta
        rows = body["results"]
        assert len(rows) <= 3 and len({r["lessonId"] for r in rows}) == len(rows)
        for r in rows:
            assert r["userId"] == uid and 101 <= r["lessonId"] <= 120 and r["lessonVersionId"] == r["lessonId"] + 4900
            if r["status"] == "completed":
                seen_completed += 1
                assert "2019" <= r["lessonCompletedDate"][:4] <= "2025" and r["statusId"] == 94
            else:
                assert r["lessonCompletedDate"] is None
        _, done, _ = await fetch("GET", f"{damstra.url}/api/v2/user/{uid}/lesson_schedule", headers=DKEY,
                                 params={"status": "completed"})
        assert [r["id"] for r in done["results"]] == [r["id"] for r in rows if r["status"] == "completed"]
        if rows:
            _, one, _ = await fetch("GET", f"{damstra.url}/api/v2/lesson_schedule/{rows[0]['id']}", headers=DKEY)
            assert one["id"] == rows[0]["id"] and "status" not in one
    assert seen_completed > 0
    assert (await fetch("GET", f"{damstra.url}/api/v2/user/5/lesson_schedule", headers=DKEY))[0] == 404
    _, lessons, _ = await fetch("GET", f"{damstra.url}/api/v2/lesson", headers=DKEY, params={"maxResults": "50"})
    assert lessons["meta"]["totalResultCount"] == 20 and lessons["results"][0]["lessonId"] == 101


async def test_damstra_million_users_page_near_end_is_fast() -> None:
    t0 = time.monotonic()
    with RunningSim(DamstraSimulator(records=1_000_000)) as sim:
        t1 = time.monotonic()
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY,
                                 params={"startIndex": "899990", "maxResults": "100"})
        assert time.monotonic() - t1 < 1.0 and time.monotonic() - t0 < 2.0
        assert body["meta"] == {"totalResultCount": 900000, "startIndex": 899990, "endIndex": 900000}
        ids = [u["id"] for u in body["results"]]
        assert len(ids) == 10 and ids == sorted(ids) and all(u["active"] for u in body["results"])
        _, again, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY,
                                  params={"startIndex": "999990", "activeValue": "all"})
        assert [u["id"] for u in again["results"]] == list(range(1_000_990, 1_001_000))


async def test_damstra_is_deterministic_and_malformed() -> None:
    a = DamstraSimulator(records=50, seed=9, malformed=0.5).data
    b = DamstraSimulator(records=50, seed=9, malformed=0.5).data
    assert [a.user(i) for i in range(50)] == [b.user(i) for i in range(50)]
    nulls = sum(1 for i in range(50) if a.user(i)["firstName"] is None)
    assert 10 <= nulls <= 40


async def test_damstra_jsonl_data(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [
        {"kind": "user", "id": 7, "userName": "zoë", "firstName": "Zoë", "lastName": "Ø", "active": True,
         "groups": [{"id": 1}]},
        {"kind": "user", "id": 3, "userName": "old", "firstName": "O", "lastName": "L", "active": False},
        {"kind": "group", "id": 1, "name": "Crew"},
        {"kind": "schedule", "id": 55, "userId": 7, "lessonId": 101, "status": "completed"},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    with RunningSim(DamstraSimulator(data=path)) as sim:
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={"activeValue": "all"})
        assert [u["id"] for u in body["results"]] == [3, 7] and "kind" not in body["results"][0]
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)
        assert [u["userName"] for u in body["results"]] == ["zoë"]
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user/7/lesson_schedule", headers=DKEY)
        assert [s["id"] for s in body["results"]] == [55]
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/group/1/member", headers=DKEY)
        assert [u["id"] for u in body["results"]] == [7]


# ---------------------------------------------------------------- Civica
async def test_civica_auth(civica: RunningSim) -> None:
    status, body, headers = await rpc(civica, "GetProfileFields", {}, auth=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic") and "message" in body
    wrong = {"Authorization": aiohttp.encode_basic_auth("demo.learning-admin.com", "x")}
    status, _, _ = await rpc(civica, "GetProfileFields", {}, auth=wrong)
    assert status == 403
    status, fields, _ = await rpc(civica, "GetProfileFields", {})
    assert status == 200 and fields["employee_number"]["label"] == "Employee number"


async def test_civica_routing_errors(civica: RunningSim) -> None:
    assert (await rpc(civica, "NoSuchApi", {"params": {}}))[0] == 404
    assert (await fetch("GET", f"{civica.url}/GetUser", headers=CAUTH))[0] == 405
    status, body, _ = await rpc(civica, "GetUser", {"uid": "x"})
    assert status == 400 and "params" in body["message"]
    status, _, _ = await fetch("POST", f"{civica.url}/GetUser", data=b"{nope", headers=CAUTH)
    assert status == 400
    assert (await fetch("POST", f"{civica.url}/GetProfileFields", headers=CAUTH))[0] == 200
    assert (await rpc(civica, "GetProfileFields", {"params": {}}))[0] == 200
    status, body, _ = await fetch("GET", f"{civica.url}/status/999", headers=CAUTH)
    assert body == {"message": "", "status": 0, "tid": "999"}


async def test_civica_async_create_lifecycle() -> None:
    sim_obj = CivicaSimulator(status_delay=0.3, base_path="/eu")
    with RunningSim(sim_obj) as sim:
        status, body, headers = await rpc(sim, "SetUser", create_body("ann", mail="ann@example.org"), "/eu")
        assert status == 202 and body is None and headers["Location"] == "/status/1"
        _, st, _ = await fetch("GET", f"{sim.url}/eu{headers['Location']}", headers=CAUTH)
        assert st == {"message": "", "status": 1, "tid": "1"}
        assert sim.call(lambda: sim_obj.pending) == 1
        # Duplicate while pending, and unknown uid for update.
        status, body, _ = await rpc(sim, "SetUser", create_body("ann"), "/eu")
        assert status == 409 and body == {"message": "username already in use"}
        status, _, _ = await rpc(sim, "SetUser", {"params": {"action": "update", "uid": "bob"}}, "/eu")
        assert status == 404
        # An update queued behind the pending create is accepted and applied after it.
        status, _, h2 = await rpc(sim, "SetUser", {"params": {"action": "update", "uid": "ann"},
                                                   "groups": [{"name": "Sales", "action": "remove"},
                                                              {"name": "Ops"}]}, "/eu")
        assert status == 202 and h2["Location"] == "/status/2"
        assert (await rpc(sim, "GetUser", {"params": {"uid": "ann"}}, "/eu"))[0] == 404
        await asyncio.sleep(0.4)
        _, st, _ = await fetch("GET", f"{sim.url}/eu/status/1", headers=CAUTH)
        assert st["status"] == 2
        status, user, _ = await rpc(sim, "GetUser", {"params": {"uid": "ann"}}, "/eu")
        assert status == 200 and user == {
            "groups": [{"name": "Ops"}], "params": {"uid": "ann"},
            "profile": {"username": "ann", "forename": "Ann", "surname": "Lee", "mail": "ann@example.org"}}
        assert (await rpc(sim, "SetUser", create_body("ann"), "/eu"))[0] == 409
        assert sim.call(lambda: dict(sim_obj.set_user_calls)) == {"create": 1, "update": 1}
        _, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        assert stats["users"] == 1 and stats["pending"] == 0 and stats["by_status"]["409"] == 2


async def test_civica_validation(civica: RunningSim) -> None:
    status, body, _ = await rpc(civica, "SetUser", create_body("x", favourite_colour="red"))
    assert status == 400 and "favourite_colour" in body["message"]
    bad = create_body("y")
    del bad["profile"]["forename"]
    status, body, _ = await rpc(civica, "SetUser", bad)
    assert status == 400 and body["message"] == "profile.forename is required"
    status, body, _ = await rpc(civica, "SetUser", {"params": {"action": "explode"}})
    assert status == 400
    status, _, _ = await rpc(civica, "SetUser", {"params": {"action": "update", "uid": "z"},
                                                 "profile": {"nope": 1}})
    assert status == 400


async def test_civica_choice_fields_and_override() -> None:
    fields = {
        "username": {"label": "Username", "mode": "Mandatory", "order": 0, "type": "Text"},
        "forename": {"label": "First", "mode": "Mandatory", "order": 1, "type": "Text"},
        "surname": {"label": "Last", "mode": "Mandatory", "order": 2, "type": "Text"},
        "site": {"label": "Site", "mode": "Mandatory", "order": 3, "type": "SingleChoice", "values": ["A", "B"]},
        "skills": {"label": "Skills", "mode": "Optional", "order": 4, "type": "MultipleChoice",
                   "values": ["x", "y"]},
    }
    with RunningSim(CivicaSimulator(status_delay=0.0, profile_fields=fields)) as sim:
        status, body, _ = await rpc(sim, "SetUser", create_body("a"))
        assert status == 400 and body["message"] == "profile.site is required"
        body = create_body("a")
        body["params"]["override_mandatory_check"] = True
        assert (await rpc(sim, "SetUser", body))[0] == 202
        assert (await rpc(sim, "SetUser", create_body("b", site="C")))[0] == 400
        assert (await rpc(sim, "SetUser", create_body("b", site="A", skills=["x", "z"])))[0] == 400
        assert (await rpc(sim, "SetUser", create_body("b", site="A", skills=["x"])))[0] == 202


async def test_civica_deactivate_and_delete() -> None:
    sim_obj = CivicaSimulator(status_delay=0.0)
    with RunningSim(sim_obj) as sim:
        await rpc(sim, "SetUser", create_body("dee"))
        assert sim.call(lambda: sim_obj.users["dee"].active) is True
        status, _, _ = await rpc(sim, "SetUser", {"params": {"action": "deactivate", "uid": "dee"}})
        assert status == 202
        assert sim.call(lambda: sim_obj.users["dee"].active) is False
        _, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        assert stats["active_users"] == 0 and stats["users"] == 1
        await rpc(sim, "SetUser", {"params": {"action": "activate", "uid": "dee"}})
        assert sim.call(lambda: sim_obj.users["dee"].active) is True
        assert (await rpc(sim, "DeleteUser", {"params": {"uid": "dee"}}))[0] == 200
        assert (await rpc(sim, "DeleteUser", {"params": {"uid": "dee"}}))[0] == 404


async def test_civica_status_fail() -> None:
    sim_obj = CivicaSimulator(status_delay=0.0, status_fail=1.0)
    with RunningSim(sim_obj) as sim:
        _, _, headers = await rpc(sim, "SetUser", create_body("f"))
        _, st, _ = await fetch("GET", f"{sim.url}{headers['Location']}", headers=CAUTH)
        assert st["status"] == 3 and st["message"]
        assert sim.call(lambda: "f" in sim_obj.users) is False


async def test_civica_award_not_idempotent(civica: RunningSim) -> None:
    await rpc(civica, "SetUser", create_body("cat"))
    award = {"params": {"uid": "cat", "ref": "CERT-105"},
             "certification": {"awardedDate": "2021-03-04T05:06:07+02:00", "score": 85.5,
                               "expiryDate": "2024-03-04T00:00:00Z"}}
    for _ in range(2):
        status, body, _ = await rpc(civica, "AwardCertificate", award)
        assert status == 200 and body == {}
    sim_obj: CivicaSimulator = civica.sim  # type: ignore[assignment]
    assert civica.call(lambda: len(sim_obj.awards)) == 2
    assert civica.call(sim_obj.duplicate_awards) == 1
    narrow = {"params": {"from_date": "2021-03-04T03:06:07Z", "to_date": "2021-03-04T03:06:08.000Z"}}
    _, body, _ = await rpc(civica, "GetUsersCertificates", narrow)
    assert body["next_cursor"] is None and len(body["certificates"]) == 2
    assert body["certificates"][0] == {
        "awared_date": "2021-03-04T03:06:07.000Z", "certificate_title": None, "certification_id": "CERT-105",
        "certification_title": sim_obj.certifications["CERT-105"], "score": 85.5,
        "expiration_date": "2024-03-04T00:00:00.000Z", "username": "cat"}
    # to_date is exclusive.
    _, body, _ = await rpc(civica, "GetUsersCertificates",
                           {"params": {"from_date": "2021-03-04T00:00:00Z", "to_date": "2021-03-04T03:06:07Z"}})
    assert body["certificates"] == []
    checks = [
        ({"params": {"uid": "nobody", "ref": "CERT-105"}}, 404, "user not found"),
        ({"params": {"uid": "cat", "ref": "CERT-999"}}, 404, "certification not found"),
        ({"params": {"uid": "cat", "ref": "CERT-101"}, "certification": {"awardedDate": "yesterday"}}, 400, None),
        ({"params": {"uid": "cat", "ref": "CERT-101"}, "certification": {"awardMode": "Renew"}}, 400, None),
    ]
    for body_in, code, message in checks:
        status, body, _ = await rpc(civica, "AwardCertificate", body_in)
        assert status == code and (message is None or body["message"] == message)
    _, stats, _ = await fetch("GET", f"{civica.url}/_sim/stats")
    assert stats["awards"] == 2 and stats["duplicate_awards"] == 1


async def test_civica_certificate_cursor_paging(civica: RunningSim) -> None:
    await rpc(civica, "SetUser", create_body("pat"))
    sim_obj: CivicaSimulator = civica.sim  # type: ignore[assignment]

    def bulk_award() -> None:  # 1,200 awards without 1,200 HTTP round trips
        for n in range(1200):
            stamp = f"2022-01-01T00:{n // 2 // 60:02d}:{n // 2 % 60:02d}.000Z"  # pairs share a timestamp
            sim_obj.awards.append(Award("pat", "CERT-101", stamp, None, None, len(sim_obj.awards)))
            when = parse_iso(stamp)
            assert when is not None
            insort(sim_obj._award_index, (int(when.timestamp() * 1000), len(sim_obj.awards) - 1))

    civica.call(bulk_award)
    params: dict[str, Any] = {"from_date": "2022-01-01T00:00:00Z", "to_date": "2023-01-01T00:00:00Z"}
    got: list[str] = []
    pages = 0
    while True:
        status, body, _ = await rpc(civica, "GetUsersCertificates", {"params": params})
        assert status == 200
        pages += 1
        got += [c["awared_date"] for c in body["certificates"]]
        if body["next_cursor"] is None:
            break
        params = {**params, "cursor": body["next_cursor"]}
    assert pages == 3 and len(got) == 1200 and got == sorted(got)
    status, body, _ = await rpc(civica, "GetUsersCertificates",
                                {"params": {**params, "from_date": "2021-01-01T00:00:00Z"}})
    assert status == 400 and "cursor" in body["message"]
    status, _, _ = await rpc(civica, "GetUsersCertificates",
                             {"params": {"from_date": "2022-01-01T00:00:00Z", "cursor": "!!garbage"}})
    assert status == 400
    assert (await rpc(civica, "GetUsersCertificates", {"params": {}}))[0] == 400


async def test_civica_inactive_users_paging_and_preload(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [{"kind": "user", "profile": {"username": f"u{n:04d}", "forename": "F", "surname": "S"},
              "groups": ["A"], "active": n % 2 == 0} for n in range(1100)]
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in lines))
    sim_obj = CivicaSimulator(status_delay=0.0, data=path)
    with RunningSim(sim_obj) as sim:
        await rpc(sim, "DeleteUser", {"params": {"uid": "u0003"}})
        names: list[str] = []
        params: dict[str, Any] = {"date": "2999-01-01T00:00:00Z"}
        while True:
            status, body, _ = await rpc(sim, "GetInactiveUsers", {"params": params})
            assert status == 200
            names += [u["params"]["uid"] for u in body["users"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert len(names) == 1099 and len(set(names)) == 1099 and "u0003" not in names and names == sorted(names)
        status, _, _ = await rpc(sim, "GetInactiveUsers", {"params": {"date": "2999-01-01", "cursor": "zz"}})
        assert status == 400
        assert (await rpc(sim, "GetInactiveUsers", {"params": {}}))[0] == 400
        _, body, _ = await rpc(sim, "GetModifiedUsers", {"params": {"date": "2000-01-01T00:00:00Z"}})
        assert len(body["users"]) == 1099
        _, body, _ = await rpc(sim, "GetModifiedUsers", {"params": {"date": "2999-01-01T00:00:00Z"}})
        assert body["users"] == []
        _, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        assert stats["users"] == 1099 and stats["active_users"] == 550


# ---------------------------------------------------------------- slow answers, mutation, rotation, stuck statuses
async def test_slow_read_outlasts_a_short_timeout_and_arrives_for_a_patient_client() -> None:
    with RunningSim(DamstraSimulator(records=10, faults="slow=1,slow_delay=400ms")) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, timeout=aiohttp.ClientTimeout(total=0.1))
        t0 = time.monotonic()
        status, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY)
        assert status == 200 and body["results"] and time.monotonic() - t0 >= 0.4
        await asyncio.sleep(0.4)  # the abandoned first request finishes its delay
        faults = sim.call(lambda: dict(sim.sim.stats.faults))  # type: ignore[attr-defined]
        assert faults["slow"] == 2 and faults["slow_abandoned"] == 1


async def test_slow_write_before_is_dropped_if_abandoned_and_after_is_applied() -> None:
    short = aiohttp.ClientTimeout(total=0.1)
    # before: the delay comes first; the client hung up meanwhile, so the write never happens
    sim_obj = CivicaSimulator(status_delay=0.0, faults="slow=1,slow_delay=300ms,after=0")
    with RunningSim(sim_obj) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await fetch("POST", f"{sim.url}/SetUser", json=create_body("late"), headers=CAUTH, timeout=short)
        await asyncio.sleep(0.4)
        assert sim.call(lambda: "late" in sim_obj.users) is False
        # a patient client gets the write applied after the delay
        status, _, _ = await rpc(sim, "SetUser", create_body("patient"))
        assert status == 202 and sim.call(lambda: "patient" in sim_obj.users)
    # after: the write is applied at once, only the answer is late
    sim_obj = CivicaSimulator(status_delay=0.0, faults="slow=1,slow_delay=300ms,after=1")
    with RunningSim(sim_obj) as sim:
        with pytest.raises(asyncio.TimeoutError):
            await fetch("POST", f"{sim.url}/SetUser", json=create_body("early"), headers=CAUTH, timeout=short)
        assert sim.call(lambda: "early" in sim_obj.users) is True
        await asyncio.sleep(0.3)
        faults = sim.call(lambda: dict(sim_obj.stats.faults))
        assert faults == {"slow": 1, "after": 1}


def _loaded_users(n: int) -> list[dict[str, Any]]:
    return [{"kind": "user", "id": 10 + i, "userName": f"u{i}", "firstName": "F", "lastName": "L", "active": True}
            for i in range(n)]


async def test_damstra_users_inserted_and_deleted_while_listing() -> None:
    rows = _loaded_users(10) + [{"kind": "schedule", "id": 900, "userId": 12, "lessonId": 101, "status": "completed"}]
    served: list[str] = []

    def hook(request: Any, resp: Any) -> None:
        if request.path == "/api/v2/user" and resp.status == 200:
            served.append(request.query.get("startIndex", "0"))
            if len(served) == 1:  # right after page 1: two records behind the offset go, one comes
                sim_obj.delete_user(10)
                sim_obj.delete_user(12)
                sim_obj.insert_user({"userName": "new", "firstName": "N", "lastName": "W"},
                                    schedules=[{"id": 901, "lessonId": 102, "status": "completed"}])

    sim_obj = DamstraSimulator(data=rows, on_served=hook)
    with RunningSim(sim_obj) as sim:
        page = {"activeValue": "all", "maxResults": "4"}
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={**page, "startIndex": "0"})
        assert [u["id"] for u in body["results"]] == [10, 11, 12, 13]
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={**page, "startIndex": "4"})
        # the listing shifted by two: a naive offset reader never sees 14 and 15
        assert [u["id"] for u in body["results"]] == [16, 17, 18, 19]
        assert body["meta"]["totalResultCount"] == 9
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={**page, "startIndex": "8"})
        assert [(u["id"], u["userName"]) for u in body["results"]] == [(20, "new")]
        assert (await fetch("GET", f"{sim.url}/api/v2/user/12", headers=DKEY))[0] == 404
        assert (await fetch("GET", f"{sim.url}/api/v2/lesson_schedule/900", headers=DKEY))[0] == 404
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user/20/lesson_schedule", headers=DKEY)
        assert [(s["id"], s["userId"]) for s in body["results"]] == [(901, 20)]
        assert served == ["0", "4", "8"]
    with pytest.raises(KeyError):
        sim_obj.delete_user(12)
    with pytest.raises(ValueError, match="above 20"):
        sim_obj.insert_user({"id": 5, "userName": "x"})
    with pytest.raises(TypeError, match="data="):
        DamstraSimulator(records=5).delete_user(1000)


async def test_damstra_loaded_data_tolerates_hostile_types(tmp_path: Path) -> None:
    rows = [{"kind": "user", "id": "7", "userName": "s", "firstName": 5, "groups": "admins"},
            {"kind": "user", "id": 3, "userName": "i", "firstName": None, "groups": None},
            {"kind": "group", "id": 1, "name": "G"}]
    with RunningSim(DamstraSimulator(data=rows)) as sim:
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={"activeValue": "all"})
        assert [u["id"] for u in body["results"]] == [3, "7"]  # served as they are, ill-typed ids last
        assert (await fetch("GET", f"{sim.url}/api/v2/group/1/member", headers=DKEY))[1]["results"] == []
        _, body, _ = await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY, params={"activeValue": "all", "q": "5"})
        assert [u["id"] for u in body["results"]] == ["7"]


async def test_damstra_rotated_key_is_refused_on_every_following_request() -> None:
    sim_obj = DamstraSimulator(records=10, rate=2, burst=2)
    with RunningSim(sim_obj) as sim:
        assert (await fetch("GET", f"{sim.url}/api/v2/lesson", headers=DKEY))[0] == 200
        sim.call(sim_obj.rotate_key, "new-key")
        # even past the old key's rate, the answer is 401 - never a 429 that would invite a retry
        statuses = [(await fetch("GET", f"{sim.url}/api/v2/user", headers=DKEY))[0] for _ in range(6)]
        assert statuses == [401] * 6
        assert (await fetch("GET", f"{sim.url}/api/v2/user", headers={"AccessKey": "new-key"}))[0] == 200
        sim.call(sim_obj.rotate_key, "damstra-demo-key")  # rotating back revives the first key
        assert (await fetch("GET", f"{sim.url}/api/v2/user", headers={"AccessKey": "new-key"}))[0] == 401


async def test_civica_status_stuck_then_fails_and_holds_the_username() -> None:
    sim_obj = CivicaSimulator(status_delay=0.0, status_stuck=1.0, status_stuck_for=0.4)
    with RunningSim(sim_obj) as sim:
        _, _, headers = await rpc(sim, "SetUser", create_body("stuck"))
        t0 = time.monotonic()
        _, st, _ = await fetch("GET", f"{sim.url}{headers['Location']}", headers=CAUTH)
        assert st["status"] == 1
        assert (await rpc(sim, "SetUser", create_body("stuck")))[0] == 409  # still holds the username
        while st["status"] == 1:
            await asyncio.sleep(0.05)
            _, st, _ = await fetch("GET", f"{sim.url}{headers['Location']}", headers=CAUTH)
        assert st["status"] == 3 and st["message"] and time.monotonic() - t0 >= 0.3
        assert sim.call(lambda: ("stuck" in sim_obj.users, sim_obj.stuck_ops, sim_obj.pending)) == (False, 1, 0)
        sim_obj.status_stuck = 0.0
        _, _, headers = await rpc(sim, "SetUser", create_body("stuck"))  # the resend now goes through
        assert (await fetch("GET", f"{sim.url}{headers['Location']}", headers=CAUTH))[1]["status"] == 2
        assert sim.call(lambda: "stuck" in sim_obj.users)


async def test_civica_stuck_ops_do_not_hold_up_later_ones() -> None:
    sim_obj = CivicaSimulator(status_delay=0.05, status_stuck=0.5, status_stuck_for=30, seed=4)
    with RunningSim(sim_obj) as sim:
        for n in range(12):
            await rpc(sim, "SetUser", create_body(f"p{n}"))
        await asyncio.sleep(0.1)
        sim.call(sim_obj.settle)
        stuck, users = sim.call(lambda: (len(sim_obj._stuck), len(sim_obj.users)))
        assert 0 < stuck < 12 and users == 12 - stuck
        _, stats, _ = await fetch("GET", f"{sim.url}/_sim/stats")
        assert stats["pending"] == stuck and stats["stuck_ops"] == 0
