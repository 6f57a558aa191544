"""Paging styles (migrator.paging), each read through HostClient from a tiny aiohttp server on loopback.

The server holds one mutable list of rows and serves it in every style: row offset, page number
(1-based and 0-based "offset means page index"), a cursor in the response sent back as a query
parameter or inside a POST body, and a single page. It can cap page sizes, leave out totals, end a
cursor listing in each plausible way, reject cursors, misbehave (ignore the position, hand back the
same cursor) and delete rows between two requests.
"""

from __future__ import annotations

import base64
from bisect import insort
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from migrator import api
from migrator.http import HostClient, HostLimits, HttpError
from migrator.paging import (
    NO_FILTERS,
    Anchored,
    Ask,
    Fetch,
    Offset,
    PageNumber,
    Paginator,
    PagingError,
    RequestBodyCursor,
    ResponseCursor,
    SinglePage,
)
from migrator.plan import load_plan
from migrator.platforms.civica.simulator import Award, CivicaSimulator, parse_iso
from migrator.simulate.server import RunningSim
from migrator.verify import verify
from tests.conftest import Sims, write_plan
from tests.expected import assert_target_matches, expected_state


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"at:{offset}".encode()).decode()


def _offset_of(token: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return int(text[3:]) if text.startswith("at:") and text[3:].isdigit() else None


class Tenant:
    """Rows served in every paging style, and a record of every request."""

    client: HostClient  # reads it, set by the fixture

    def __init__(self, count: int) -> None:
        self.rows: list[dict[str, Any]] = [{"id": i, "name": f"row {i}"} for i in range(1, count + 1)]
        self.cap = 1000  # the page size the server never exceeds, whatever was asked
        self.totals = True  # report the listing's row count
        self.cursor_end = "null"  # how a cursor listing ends: "null", "missing" or "empty"
        self.cursor_page = 4
        self.cursor_always = False  # a lazy server: a next_cursor even on the last page
        self.requests: list[tuple[str, dict[str, str], Any]] = []  # (path, query, JSON body)
        self.before: dict[int, Callable[[Tenant], None]] = {}  # request number (1-based) → change first

    def delete(self, *ids: int) -> None:
        self.rows = [r for r in self.rows if r["id"] not in ids]

    def count(self, path: str) -> int:
        return sum(1 for p, _, _ in self.requests if p == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.path, dict(request.query), body))
        change = self.before.get(len(self.requests))
        if change is not None:
            change(self)
        q = request.query
        match request.path:
            case "/offset":
                start, size = int(q.get("startIndex", 0)), min(int(q["maxResults"]), self.cap)
                out: dict[str, Any] = {"results": self.rows[start : start + size]}
                if self.totals:
                    out["meta"] = {"totalResultCount": len(self.rows)}
                return web.json_response(out)
            case "/stuck":  # ignores startIndex: always the first page
                return web.json_response({"results": self.rows[: int(q["maxResults"])]})
            case "/nexport":  # 1-based page/per_page, total_count and the effective page_size
                size = min(int(q["per_page"]), self.cap)
                page = int(q["page"]) - 1
                rows = self.rows[page * size : (page + 1) * size]
                if not self.totals:
                    return web.json_response(rows)  # NexPort's bare-array endpoints
                return web.json_response({"enrollments": rows, "total_count": len(self.rows), "page_size": size})
            case "/absorb":  # `_offset` is the page index, 0-based
                size = min(int(q["_limit"]), self.cap)
                page = int(q["_offset"])
                rows = self.rows[page * size : (page + 1) * size]
                return web.json_response({"totalItems": len(self.rows), "limit": size, "offset": page, "users": rows})
            case "/cursor":
                return self._cursor_page(q.get("cursor"), "users")
            case "/GetUsersCertificates":
                params = (body or {}).get("params") or {}
                if "from_date" not in params:
                    return web.json_response({"error": "from_date is required"}, status=400)
                return self._cursor_page(params.get("cursor"), "certificates")
            case "/same-cursor":
                return web.json_response({"users": self.rows[:2], "next_cursor": "again"})
            case "/all":
                return web.json_response(self.rows)
        return web.json_response({"error": "no such route"}, status=404)

    def _cursor_page(self, cursor: str | None, key: str) -> web.Response:
        start = 0 if cursor is None else _offset_of(cursor)
        if start is None:
            return web.json_response({"error": "invalid cursor"}, status=400)
        rows = self.rows[start : start + self.cursor_page]
        out: dict[str, Any] = {key: rows}
        if self.cursor_always or start + self.cursor_page < len(self.rows):
            out["next_cursor"] = _token(start + self.cursor_page)
        elif self.cursor_end != "missing":
            out["next_cursor"] = None if self.cursor_end == "null" else ""
        return web.json_response(out)


@pytest.fixture
async def tenant() -> AsyncIterator[Tenant]:
    data = Tenant(23)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", data.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with HostClient(f"http://{host}:{port}", limits=HostLimits(rate=None, max_retries=1), name="t") as client:
        data.client = client
        yield data
    await runner.cleanup()


def get(tenant: Tenant, path: str) -> Fetch:
    async def fetch(ask: Ask) -> Any:
        return await tenant.client.request_json("GET", path, params=ask.params)

    return fetch


def post(tenant: Tenant, path: str) -> Fetch:
    async def fetch(ask: Ask) -> Any:
        return await tenant.client.request_json("POST", path, json=ask.body)

    return fetch


async def read_all(
    paginator: Paginator, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS
) -> tuple[list[int], list[str | None], list[int | None]]:
    ids: list[int] = []
    cursors: list[str | None] = []
    totals: list[int | None] = []
    async for page in paginator.pages(fetch, cursor, first):
        ids += [r["id"] for r in page.rows]
        cursors.append(page.cursor)
        totals.append(page.total)
    return ids, cursors, totals


ALL_23 = list(range(1, 24))


def damstra_offsets(limit: int, total: str | None = "meta.totalResultCount") -> Offset:
    return Offset(offset_param="startIndex", limit_param="maxResults", limit=limit, rows="results", total=total)


# ---------------------------------------------------------------- offset (startIndex/maxResults)


async def test_offset_a_capped_short_page_is_not_the_end(tenant: Tenant) -> None:
    tenant.cap, tenant.totals = 7, False  # asked 10, served 7: short, yet 16 rows remain
    ids, cursors, totals = await read_all(damstra_offsets(10, total=None), get(tenant, "/offset"))
    assert ids == ALL_23
    assert cursors == ["7", "14", "21", "23"]  # moved by the rows received, never by the size asked
    assert totals == [None] * 4
    # the end is proven by an empty page asked where the rows ran out
    assert [q["startIndex"] for _, q, _ in tenant.requests] == ["0", "7", "14", "21", "23"]
    assert {q["maxResults"] for _, q, _ in tenant.requests} == {"10"}


async def test_offset_stops_at_the_reported_total_without_an_empty_page(tenant: Tenant) -> None:
    tenant.cap = 7
    ids, cursors, totals = await read_all(damstra_offsets(10), get(tenant, "/offset"))
    assert ids == ALL_23 and cursors == ["7", "14", "21", "23"] and totals == [23] * 4
    assert tenant.count("/offset") == 4


async def test_offset_empty_last_page_and_resume_from_a_cursor(tenant: Tenant) -> None:
    tenant.rows, tenant.totals = tenant.rows[:20], False  # a multiple of the page size: the end is an empty page
    ids, cursors, _ = await read_all(damstra_offsets(10, total=None), get(tenant, "/offset"))
    assert ids == list(range(1, 21)) and cursors == ["10", "20"]
    assert [q["startIndex"] for _, q, _ in tenant.requests] == ["0", "10", "20"]
    ids, cursors, _ = await read_all(damstra_offsets(10, total=None), get(tenant, "/offset"), "15", Ask({"q": "x"}))
    assert ids == list(range(16, 21)) and cursors == ["20"]
    assert tenant.requests[3][1] == {"q": "x", "startIndex": "15", "maxResults": "10"}  # filters kept


async def test_offset_a_server_ignoring_the_offset_fails_instead_of_looping(tenant: Tenant) -> None:
    with pytest.raises(PagingError, match="ignores `startIndex`"):
        await read_all(damstra_offsets(5, total=None), get(tenant, "/stuck"))
    assert tenant.count("/stuck") == 2


async def test_a_response_that_is_not_a_page_is_refused(tenant: Tenant) -> None:
    wrong_rows = Offset(offset_param="startIndex", limit_param="maxResults", limit=5, rows="items")
    with pytest.raises(PagingError, match="expected a page with a list at `items`, got NoneType"):
        await read_all(wrong_rows, get(tenant, "/offset"))
    wrong_total = damstra_offsets(5, total="results")
    with pytest.raises(PagingError, match="`results` must be a row count"):
        await read_all(wrong_total, get(tenant, "/offset"))


# ---------------------------------------------------------------- page number


def nexport(size: int = 10, *, total: bool = True) -> PageNumber:
    if not total:
        return PageNumber(page_param="page", size_param="per_page", size=size, base=1, rows=None)
    return PageNumber(page_param="page", size_param="per_page", size=size, base=1, rows="enrollments",
                      total="total_count", page_size="page_size")


async def test_page_number_one_based_capped_pages_stop_at_the_total(tenant: Tenant) -> None:
    tenant.cap = 6  # asked 10 per page, served 6: every page is short, only the total ends it
    ids, cursors, totals = await read_all(nexport(), get(tenant, "/nexport"))
    assert ids == ALL_23 and cursors == ["2", "3", "4", "5"] and totals == [23] * 4
    assert [q["page"] for _, q, _ in tenant.requests] == ["1", "2", "3", "4"]


async def test_page_number_bare_arrays_end_on_an_empty_page(tenant: Tenant) -> None:
    tenant.cap, tenant.totals = 6, False
    ids, _, totals = await read_all(nexport(total=False), get(tenant, "/nexport"))
    assert ids == ALL_23 and totals == [None] * 4
    assert [q["page"] for _, q, _ in tenant.requests] == ["1", "2", "3", "4", "5"]  # page 5 is empty


async def test_page_number_resumed_mid_listing_uses_the_served_page_size(tenant: Tenant) -> None:
    tenant.cap = 6
    ids, cursors, _ = await read_all(nexport(), get(tenant, "/nexport"), "3")
    assert ids == list(range(13, 24)) and cursors == ["4", "5"]
    assert tenant.count("/nexport") == 2  # rows before page 3 = 2 x 6 served: the total is reached, no empty page


async def test_page_number_zero_based_where_offset_means_the_page_index(tenant: Tenant) -> None:
    absorb = PageNumber(page_param="_offset", size_param="_limit", size=5, base=0, rows="users",
                        total="totalItems", page_size="limit")
    ids, cursors, _ = await read_all(absorb, get(tenant, "/absorb"))
    assert ids == ALL_23 and cursors == ["1", "2", "3", "4", "5"]
    assert [q["_offset"] for _, q, _ in tenant.requests] == ["0", "1", "2", "3", "4"]
    assert {q["_limit"] for _, q, _ in tenant.requests} == {"5"}


# ---------------------------------------------------------------- cursors


@pytest.mark.parametrize("end", ["null", "missing", "empty"])
async def test_response_cursor_is_followed_to_a_page_without_one(tenant: Tenant, end: str) -> None:
    tenant.cursor_end = end
    ids, cursors, _ = await read_all(ResponseCursor(rows="users"), get(tenant, "/cursor"))
    assert ids == ALL_23
    assert cursors == [_token(4), _token(8), _token(12), _token(16), _token(20), _token(20)]  # last: re-read on resume
    sent = [q.get("cursor") for _, q, _ in tenant.requests]
    assert sent == [None, _token(4), _token(8), _token(12), _token(16), _token(20)]


async def test_response_cursor_ends_on_an_empty_page(tenant: Tenant) -> None:
    tenant.rows, tenant.cursor_always = tenant.rows[:8], True  # a cursor even after the last row
    ids, cursors, _ = await read_all(ResponseCursor(rows="users"), get(tenant, "/cursor"))
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8] and cursors == [_token(4), _token(8)]
    assert [q.get("cursor") for _, q, _ in tenant.requests] == [None, _token(4), _token(8)]  # the third: empty


async def test_response_cursor_the_server_rejects_is_a_clear_error_not_a_loop(tenant: Tenant) -> None:
    with pytest.raises(HttpError) as err:
        await read_all(ResponseCursor(rows="users"), get(tenant, "/cursor"), "not-a-cursor")
    assert err.value.status == 400 and "invalid cursor" in str(err.value)
    assert tenant.count("/cursor") == 1


async def test_a_cursor_handed_back_again_fails_instead_of_looping(tenant: Tenant) -> None:
    with pytest.raises(PagingError, match="handed back `next_cursor` 'again' it had already given"):
        await read_all(ResponseCursor(rows="users"), get(tenant, "/same-cursor"))
    assert tenant.count("/same-cursor") == 2


async def test_request_body_cursor_travels_inside_params_with_the_filters(tenant: Tenant) -> None:
    tenant.cursor_page = 10
    listing = RequestBodyCursor(cursor_field="params.cursor", rows="certificates")
    first = Ask(body={"params": {"from_date": "1970-01-01"}})
    ids, cursors, _ = await read_all(listing, post(tenant, "/GetUsersCertificates"), None, first)
    assert ids == ALL_23 and cursors == [_token(10), _token(20), _token(20)]
    assert [b for _, _, b in tenant.requests] == [
        {"params": {"from_date": "1970-01-01"}},
        {"params": {"from_date": "1970-01-01", "cursor": _token(10)}},
        {"params": {"from_date": "1970-01-01", "cursor": _token(20)}},
    ]
    assert first.body == {"params": {"from_date": "1970-01-01"}}  # the caller's body is left as it was


async def test_request_body_cursor_the_server_rejects_is_a_clear_error(tenant: Tenant) -> None:
    listing = RequestBodyCursor(rows="certificates")
    with pytest.raises(HttpError) as err:
        await read_all(listing, post(tenant, "/GetUsersCertificates"), "bogus", Ask(body={"params": {"from_date": "x"}}))
    assert err.value.status == 400 and "invalid cursor" in str(err.value)
    assert tenant.count("/GetUsersCertificates") == 1


# ---------------------------------------------------------------- single page


async def test_single_page_is_one_request(tenant: Tenant) -> None:
    ids, cursors, totals = await read_all(SinglePage(rows=None), get(tenant, "/all"))
    assert ids == ALL_23 and cursors == [None] and totals == [None]
    assert tenant.count("/all") == 1
    tenant.rows = []
    assert await read_all(SinglePage(rows=None), get(tenant, "/all")) == ([], [], [])


# ---------------------------------------------------------------- overlap and anchor


def deleted_after_request(tenant: Tenant, request: int, ids: range | list[int]) -> None:
    tenant.before[request] = lambda t: t.delete(*ids)


@pytest.mark.parametrize("totals", [True, False])
async def test_anchor_finds_its_place_when_more_rows_vanished_than_the_overlap(tenant: Tenant, totals: bool) -> None:
    tenant.rows, tenant.totals = [{"id": i} for i in range(1, 61)], totals
    # 10 rows deleted behind the reader (overlap 5) before its third page: plain offsets skip 10
    deleted_after_request(tenant, 3, range(3, 13))
    anchored, _, _ = await read_all(Anchored(damstra_offsets(10, None if not totals else "meta.totalResultCount")),
                                    get(tenant, "/offset"))
    assert set(range(1, 61)) <= set(anchored)  # every row, the deleted ones read before they went

    tenant.rows, tenant.requests = [{"id": i} for i in range(1, 61)], []
    deleted_after_request(tenant, 3, range(3, 13))
    plain, _, _ = await read_all(damstra_offsets(10, None if not totals else "meta.totalResultCount"),
                                 get(tenant, "/offset"))
    assert not set(range(21, 31)) & set(plain)  # what the wrapper protects against: 10 rows skipped


async def test_anchor_overlap_and_cursors(tenant: Tenant) -> None:
    tenant.rows = [{"id": i} for i in range(1, 31)]
    ids, cursors, _ = await read_all(Anchored(damstra_offsets(10)), get(tenant, "/offset"))
    # each page asked from 5 rows back (half a page at most), and stopped by the total
    assert [q["startIndex"] for _, q, _ in tenant.requests] == ["0", "5", "10", "15", "20"]
    assert cursors == ["10", "15", "20", "25", "30"]
    assert ids == list(range(1, 11)) + [i for start in (5, 10, 15, 20) for i in range(start + 1, start + 11)]
    ids, cursors, _ = await read_all(Anchored(damstra_offsets(10)), get(tenant, "/offset"), "25")
    assert ids == list(range(21, 31)) and cursors == ["30"]  # a resume overlaps too


async def test_anchor_ends_only_on_proof_when_the_cap_is_below_the_overlap(tenant: Tenant) -> None:
    tenant.cap, tenant.totals = 3, False  # asked 20: pages of 3, shorter than the overlap of 5
    ids, _, _ = await read_all(Anchored(damstra_offsets(20, total=None)), get(tenant, "/offset"))
    assert set(ids) == set(ALL_23)
    assert tenant.requests[-1][1]["startIndex"] == "23"  # the last page asked right where the rows end
    assert tenant.count("/offset") < 23  # the overlap shrank to the pages served: still moving on


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7])
async def test_anchor_small_pages_end_without_a_total(tenant: Tenant, limit: int) -> None:
    tenant.totals = False
    ids, cursors, _ = await read_all(Anchored(damstra_offsets(limit, total=None)), get(tenant, "/offset"))
    assert set(ids) == set(ALL_23) and cursors[-1] == "23"


async def test_anchor_rows_deleted_at_the_end_without_a_total(tenant: Tenant) -> None:
    tenant.rows, tenant.totals = [{"id": i} for i in range(1, 41)], False
    # after 3 requests (20 rows read), 12 rows behind the reader vanish: what is left ends before its offset
    deleted_after_request(tenant, 4, range(1, 13))
    ids, cursors, _ = await read_all(Anchored(damstra_offsets(10, total=None)), get(tenant, "/offset"))
    assert set(range(1, 41)) <= set(ids)
    assert cursors[-1] == "28"  # the true end of what remains


# ---------------------------------------------------------------- Damstra's listings on these paginators


@pytest.mark.parametrize("sims", [{"damstra": {"records": 60, "page_cap": 1, "page_default": 1}}], indirect=True)
async def test_damstra_server_capping_pages_at_one_row_loses_nothing(sims: Sims, tmp_path: Path) -> None:
    # Damstra documents no maximum page size: a tenant that serves one row per page, whatever is
    # asked, still gives every user and every completion (schedule pages of 1 are short, not last)
    data = sims.damstra.sim.data
    completed = [sum(s.get("status") == "completed" for s in data.schedules(i)) for i in range(len(data))]
    assert max(completed) >= 2  # some user's completions span several pages
    plan = load_plan(write_plan(tmp_path, sims))
    report = await api.run(plan)
    assert report["run"]["outcome"] == "complete"
    expected = expected_state(sims.damstra.sim)
    assert report["streams"]["users"]["written"] == len(expected["users"])
    assert_target_matches(sims.civica_state(), expected)
    assert (await verify(plan))["ok"]


# ---------------------------------------------------------------- Civica's cursor in a POST body


async def test_civica_certificates_read_with_the_request_body_cursor() -> None:
    # how CivicaCertificates.export / reconcile read: POST GetUsersCertificates, cursor in params.cursor
    sim = CivicaSimulator(status_delay=0.0)

    def award_1200() -> None:
        for n in range(1200):
            stamp = f"2022-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"
            sim.awards.append(Award(f"user{n % 7}", "CERT-101", stamp, None, None, len(sim.awards)))
            when = parse_iso(stamp)
            assert when is not None
            insort(sim._award_index, (int(when.timestamp() * 1000), len(sim.awards) - 1))

    listing = RequestBodyCursor(cursor_field="params.cursor", next_cursor="next_cursor", rows="certificates")
    window = Ask(body={"params": {"from_date": "2022-01-01T00:00:00Z", "to_date": "2023-01-01T00:00:00Z"}})
    with RunningSim(sim) as running:
        running.call(award_1200)
        limits = HostLimits(rate=None, max_retries=1)
        async with HostClient(running.url, limits=limits, auth=("demo.learning-admin.com", "civica-demo-key")) as civica:

            async def read(ask: Ask) -> Any:
                return await civica.request_json("POST", "/GetUsersCertificates", json=ask.body)

            pages = [page async for page in listing.pages(read, None, window)]
            assert [len(p.rows) for p in pages] == [500, 500, 200]  # Civica's fixed 500 per page
            dates = [r["awared_date"] for p in pages for r in p.rows]
            assert len(set(dates)) == 1200 and dates == sorted(dates)

            resumed = [page async for page in listing.pages(read, pages[0].cursor, window)]
            assert [r["awared_date"] for p in resumed for r in p.rows] == dates[500:]

            # a cursor from another date window: Civica refuses it, and the paginator does not retry or loop
            other = Ask(body={"params": {"from_date": "2021-01-01T00:00:00Z"}})
            sent_before = civica.stats.requests
            with pytest.raises(HttpError) as err:
                _ = [page async for page in listing.pages(read, pages[0].cursor, other)]
            assert err.value.status == 400 and "cursor does not match from_date/to_date" in str(err.value)
            assert civica.stats.requests == sent_before + 1
