"""Paging styles, one tiny class each, behind one interface.

A paginator knows how a listing moves from page to page: which request asks for the page at a resume
cursor, where a page keeps its rows, its total and its next position, and when the listing is
provably over. It knows nothing about platforms or HTTP clients: `pages` is handed a `fetch`
function that sends one `Ask` (query parameters and, for POST listings, a JSON body) and returns
the decoded JSON.

Stop rules hold under every plausible reading of an undocumented server. A page shorter than asked
is never taken as the end (servers cap page sizes, some filter after slicing); a listing ends on an
empty page, on a missing or empty cursor, or when a reported total is reached, as each style
allows. A server that answers a different position with the very same page, or hands back a cursor
already followed, raises `PagingError` instead of looping.

Paginators hold configuration only; each `pages` call keeps its own state, so one instance serves
many listings at once.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NamedTuple, Protocol


class Ask(NamedTuple):
    """One request of a listing: query parameters, and the JSON body for POST listings."""

    params: Mapping[str, str] = {}
    body: Any = None


NO_FILTERS = Ask()
Fetch = Callable[[Ask], Awaitable[Any]]  # send this request, return the decoded JSON


class Page(NamedTuple):
    rows: list[Any]
    cursor: str | None  # where to resume AFTER this page; pass it back to `pages`
    total: int | None = None  # rows in the whole listing, when the server says


class PagingError(RuntimeError):
    """The server's answers cannot be paged through: not a page, or a listing that would loop."""


def _path(dotted: str | None) -> tuple[str, ...]:
    return tuple(dotted.split(".")) if dotted else ()


def _dig(body: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


class Paginator:
    """One paging style.

    `rows` is the dotted path of the page's row list in the response (None: the body is the list);
    `total` the dotted path of the listing's row count, when the server reports one.
    """

    def __init__(self, *, rows: str | None, total: str | None = None) -> None:
        self.rows_path, self.total_path = _path(rows), _path(total)
        self.rows_name, self.total_name = rows or "(the body)", total

    def read(self, body: Any) -> tuple[list[Any], int | None]:
        """A response's rows and reported total; PagingError when it is not a page."""
        rows = _dig(body, self.rows_path)
        if not isinstance(rows, list):
            raise PagingError(f"expected a page with a list at `{self.rows_name}`, got {type(rows).__name__}")
        total = _dig(body, self.total_path) if self.total_path else None
        if total is not None and (type(total) is not int or total < 0):
            raise PagingError(f"`{self.total_name}` must be a row count, got {total!r}")
        return rows, total

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        """Every non-empty page from `cursor` (None: the beginning) to the provable end.

        `first` carries the listing's own parameters (filters); the paginator adds its positions.
        """
        raise NotImplementedError
        yield  # pragma: no cover


def _same_page(rows: list[Any], previous: list[Any] | None) -> bool:
    return bool(rows) and rows == previous


def _repeated(name: str, position: object) -> PagingError:
    return PagingError(
        f"the server answered {name}={position} with the same rows as the page before: it ignores"
        f" `{name}`, and reading on would loop"
    )


class SinglePage(Paginator):
    """No paging: one request returns everything. The cursor is ignored (a resume reads it again)."""

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        rows, total = self.read(await fetch(first))
        if rows:
            yield Page(rows, None, total)


class Offset(Paginator):
    """Row offset plus page size (`startIndex`/`maxResults`, `offset`/`limit`, `skip`/`top`).

    The cursor is the row offset to read next. Moves on by the rows received, never by the size
    asked: a server may cap the size silently.
    """

    def __init__(
        self,
        *,
        offset_param: str = "offset",
        limit_param: str = "limit",
        limit: int = 100,
        rows: str | None,
        total: str | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        super().__init__(rows=rows, total=total)
        self.offset_param, self.limit_param, self.limit = offset_param, limit_param, limit

    def ask_at(self, first: Ask, offset: int) -> Ask:
        return Ask({**first.params, self.offset_param: str(offset), self.limit_param: str(self.limit)}, first.body)

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        offset = int(cursor or 0)
        previous: list[Any] | None = None
        while True:
            rows, total = self.read(await fetch(self.ask_at(first, offset)))
            if not rows:
                return
            if _same_page(rows, previous):
                raise _repeated(self.offset_param, offset)
            offset += len(rows)
            yield Page(rows, str(offset), total)
            if total is not None and offset >= total:
                return
            previous = rows


class PageNumber(Paginator):
    """Page index plus page size: NexPort `page`/`per_page` (1-based), Absorb `_offset`/`_limit`
    where "offset" means the page index (0-based: `base=0`).

    The cursor is the page index to read next. A total ends the listing only when the rows before
    the page are known: counted from the first page in this call, or from the page size the server
    reports (`page_size`, a dotted path) when resuming mid-listing.
    """

    def __init__(
        self,
        *,
        page_param: str = "page",
        size_param: str = "per_page",
        size: int = 100,
        base: int = 1,
        rows: str | None,
        total: str | None = None,
        page_size: str | None = None,
    ) -> None:
        if size < 1 or base < 0:
            raise ValueError("size must be >= 1 and base >= 0")
        super().__init__(rows=rows, total=total)
        self.page_param, self.size_param, self.size, self.base = page_param, size_param, size, base
        self.page_size_path = _path(page_size)

    def ask_for(self, first: Ask, page: int) -> Ask:
        return Ask({**first.params, self.page_param: str(page), self.size_param: str(self.size)}, first.body)

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        page = self.base if cursor is None else int(cursor)
        counted: int | None = 0 if page == self.base else None  # rows before `page`, when known
        previous: list[Any] | None = None
        while True:
            body = await fetch(self.ask_for(first, page))
            rows, total = self.read(body)
            if not rows:
                return
            if _same_page(rows, previous):
                raise _repeated(self.page_param, page)
            if counted is None:
                served = _dig(body, self.page_size_path) if self.page_size_path else None
                if type(served) is int and served > 0:
                    counted = (page - self.base) * served
            if counted is not None:
                counted += len(rows)
            page += 1
            yield Page(rows, str(page), total)
            if total is not None and counted is not None and counted >= total:
                return
            previous = rows


class _Cursor(Paginator):
    """An opaque cursor the server returns in the body (`next_cursor`, a dotted path); the
    listing ends on a page without one (null, missing or empty) or on an empty page."""

    def __init__(self, *, cursor_param: str, next_cursor: str = "next_cursor", rows: str | None,
                 total: str | None = None) -> None:
        super().__init__(rows=rows, total=total)
        self.cursor_param, self.next_path, self.next_name = cursor_param, _path(next_cursor), next_cursor

    def ask_with(self, first: Ask, cursor: str | None) -> Ask:
        raise NotImplementedError

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        sent: set[str] = set()  # every cursor followed: one handed back again would loop
        while True:
            body = await fetch(self.ask_with(first, cursor))
            rows, total = self.read(body)
            after = _dig(body, self.next_path)
            if after is not None and not isinstance(after, str | int):
                raise PagingError(f"`{self.next_name}` must be a cursor, got {type(after).__name__}")
            after = str(after) if after not in (None, "") else None
            if rows:
                # the last page has no cursor after it: resuming re-reads it (repeats are harmless)
                yield Page(rows, after if after is not None else cursor, total)
            if after is None or not rows:
                return
            if cursor is not None:
                sent.add(cursor)
            if after == cursor or after in sent:
                raise PagingError(
                    f"the server handed back `{self.next_name}` {after!r} it had already given: reading on would loop"
                )
            cursor = after


class ResponseCursor(_Cursor):
    """Cursor from the response body, sent back as a query parameter (`cursor_param`)."""

    def __init__(self, *, cursor_param: str = "cursor", next_cursor: str = "next_cursor", rows: str | None,
                 total: str | None = None) -> None:
        super().__init__(cursor_param=cursor_param, next_cursor=next_cursor, rows=rows, total=total)

    def ask_with(self, first: Ask, cursor: str | None) -> Ask:
        if cursor is None:
            return first
        return Ask({**first.params, self.cursor_param: cursor}, first.body)


class RequestBodyCursor(_Cursor):
    """Cursor from the response body, sent back inside the POST JSON body at a dotted path
    (e.g. `params.cursor`). The listing's own body (filters, dates) is resent with every page."""

    def __init__(self, *, cursor_field: str = "params.cursor", next_cursor: str = "next_cursor", rows: str | None,
                 total: str | None = None) -> None:
        super().__init__(cursor_param=cursor_field, next_cursor=next_cursor, rows=rows, total=total)
        self.field_path = _path(cursor_field)

    def ask_with(self, first: Ask, cursor: str | None) -> Ask:
        if cursor is None:
            return first
        if first.body is not None and not isinstance(first.body, dict):
            raise TypeError(f"a cursor at `{self.cursor_param}` needs a JSON object body, not {type(first.body).__name__}")
        body = copy.deepcopy(first.body) if first.body is not None else {}
        node = body
        for key in self.field_path[:-1]:
            child = node.get(key)
            node[key] = child = child if isinstance(child, dict) else {}
            node = child
        node[self.field_path[-1]] = cursor
        return Ask(first.params, body)


# ------------------------------------------------------------ overlap and anchor


class RowOffsets(Protocol):
    """What the anchor wrapper needs of a style: pages addressable at any row offset."""

    limit: int
    offset_param: str

    def ask_at(self, first: Ask, offset: int) -> Ask: ...

    def read(self, body: Any) -> tuple[list[Any], int | None]: ...


def row_id(row: Any) -> str:
    return str(row.get("id")) if isinstance(row, dict) else repr(row)


class Anchored(Paginator):
    """Offset paging made safe against rows vanishing mid-listing, around any row-offset style.

    Offset paging skips a row whenever one before the cursor is deleted between two pages, so every
    page is asked for from `overlap` rows back, and must contain one of the ids that ended the
    previous page (the anchor). If none is there, more rows vanished than the overlap covers, and
    the request steps further back until it finds one. The overlap never exceeds half a page (of
    the size asked, or the largest page the server actually returned), so each page still brings
    new rows. Repeats are harmless: the reader drops rows it has already seen. New rows (higher
    ids) arrive at the end.

    The listing ends only when provably complete: a reported total is reached, or a page asked
    exactly where the rows read end comes back empty. A window that ends on the anchor proves
    nothing by itself (the server may cap pages below the overlap), so it is followed by that
    exact-position page.

    The cursor is the row offset after the last page, as with plain `Offset`.
    """

    def __init__(self, inner: RowOffsets, *, overlap: int = 5, key: Callable[[Any], str] = row_id) -> None:
        self.inner, self.overlap, self.key = inner, overlap, key

    def read(self, body: Any) -> tuple[list[Any], int | None]:
        return self.inner.read(body)

    async def pages(self, fetch: Fetch, cursor: str | None = None, first: Ask = NO_FILTERS) -> AsyncIterator[Page]:
        start = int(cursor or 0)
        largest = 0  # the largest page the server returned: a cap below `limit` shows here
        tail: set[str] = set()  # ids that ended the previous page
        exact = False  # ask at `start` itself, with no overlap
        previous: tuple[int, list[Any]] | None = None
        while True:
            overlap = min(self.overlap, min(self.inner.limit, largest or self.inner.limit) // 2)
            back = 0 if exact else min(start, overlap)
            while True:
                ask = start - back
                rows, total = self.inner.read(await fetch(self.inner.ask_at(first, ask)))
                if previous is not None and previous[0] != ask and _same_page(rows, previous[1]):
                    raise _repeated(self.inner.offset_param, ask)
                previous = (ask, rows)
                ids = [self.key(r) for r in rows]
                if not tail or ask == 0 or back == 0 or tail.intersection(ids):
                    break
                back = min(start, max(back, 1) * 4)  # more vanished than the overlap covers
            if not rows:
                return
            largest = max(largest, len(rows))
            after = ask + len(rows)
            yield Page(rows, str(after), total)
            if total is not None and after >= total:
                return
            # a window ending on the anchor brought nothing new: only a page asked right after it can
            # prove the end (the server may cap pages below the overlap)
            exact = back > 0 and ids[-1] in tail
            start, tail = after, set(ids[-max(overlap, 1) :])
