"""What a team would use instead of migrator, moving the same users between the same simulators.

    python benchmarks/contestants.py raw|naive|dlt --damstra URL --civica URL [options] --out FILE

Every contestant sends the requests migrator sends for a user: Damstra's user pages
(GET /api/v2/user?activeValue=all, `--page-size` per page, after one pass over /api/v2/group for
the group names), then per user a Civica SetUser create, GET /status/{tid} until the status is
final (first poll after `--poll-initial` s, then doubling up to `--poll-max`), and for an inactive
user a SetUser deactivate polled the same way.

- raw:   asyncio + aiohttp, `--workers` users in flight, `--connections` pooled connections to
         Civica. No mapping layer, no ledger, no limiter, no retries: the ceiling of this machine.
         `--loop uvloop` runs it on the event loop migrator uses, so the ceiling is not lower
         merely because of the loop.
- naive: `requests`, one request at a time, as one-off migration scripts are written.
- dlt:   dlt's `rest_api` source (offset paginator) into a `@dlt.destination` sink that sends the
         same requests with `requests`. With `--workers` > 1 the load step runs that many jobs at
         once (load workers, max_parallel_load_jobs, and files rotated so there are that many).

`--records` bounds how many users move, `--seconds` how long new users are started (raw and
naive); the result file holds what moved and how long it took (timer starts after imports).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any

INACTIVE_STATUS = 57
SCOPE = "demo.learning-admin.com"
FINAL = (2, 3)
THREADS: set[int] = set()  # dlt: threads the sink was called on


class Options(argparse.Namespace):
    damstra: str
    civica: str
    damstra_key: str
    civica_key: str
    records: int
    seconds: float
    workers: int
    connections: int
    page_size: int
    poll_initial: float
    poll_max: float
    batch_size: int
    loop: str
    out: str


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.requests = 0
        self.failed = 0

    def add(self, users: int = 0, requests: int = 0, failed: int = 0) -> None:
        with self.lock:
            self.users += users
            self.requests += requests
            self.failed += failed


def civica_headers(o: Options) -> dict[str, str]:
    token = base64.b64encode(f"{SCOPE}:{o.civica_key}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def create_body(user: dict[str, Any], group_names: dict[int, str]) -> dict[str, Any]:
    """The SetUser create migrator's default mapping produces for this Damstra user."""
    profile: dict[str, Any] = {
        "username": user["userName"],
        "forename": user["firstName"],
        "surname": user["lastName"],
    }
    for src, dst in (
        ("emailAddress", "mail"),
        ("employeeNumber", "employee_number"),
        ("timeZone", "timezone"),
    ):
        if user.get(src):
            profile[dst] = user[src]
    groups = user.get("groups") or []
    if isinstance(groups, str):  # dlt may hand nested values over as JSON text
        groups = json.loads(groups)
    names = sorted({group_names[int(g["id"])] for g in groups})
    return {
        "params": {"action": "create", "send_welcome": False},
        "profile": profile,
        "groups": [{"name": n} for n in names],
    }


def is_inactive(user: dict[str, Any]) -> bool:
    return user.get("clientStatusId") == INACTIVE_STATUS


def deactivate_body(user: dict[str, Any]) -> dict[str, Any]:
    return {"params": {"action": "deactivate", "uid": user["userName"]}}


# ---------------------------------------------------------------------------------------------
# synchronous building blocks (naive and dlt)


def read_groups_sync(session: Any, o: Options, counter: Counter) -> dict[int, str]:
    names: dict[int, str] = {}
    start = 0
    while True:
        resp = session.get(
            f"{o.damstra}/api/v2/group", params={"startIndex": start, "maxResults": o.page_size}, timeout=30
        )
        counter.add(requests=1)
        resp.raise_for_status()
        body = resp.json()
        for g in body["results"]:
            names[int(g["id"])] = g["name"]
        start += len(body["results"])
        if not body["results"] or start >= body["meta"]["totalResultCount"]:
            return names


def set_user_sync(session: Any, o: Options, body: dict[str, Any], counter: Counter) -> bool:
    resp = session.post(f"{o.civica}/SetUser", data=json.dumps(body), timeout=30)
    counter.add(requests=1)
    if resp.status_code != 202:
        return False
    pause = o.poll_initial
    while True:
        if pause:
            time.sleep(pause)
        st = session.get(o.civica + resp.headers["Location"], timeout=30)
        counter.add(requests=1)
        status = st.json().get("status")
        if status in FINAL:
            return status == 2
        pause = min(max(pause * 2, 0.001), o.poll_max)


def migrate_user_sync(
    session: Any, o: Options, user: dict[str, Any], names: dict[int, str], counter: Counter
) -> None:
    ok = set_user_sync(session, o, create_body(user, names), counter)
    if ok and is_inactive(user):
        ok = set_user_sync(session, o, deactivate_body(user), counter)
    counter.add(users=1 if ok else 0, failed=0 if ok else 1)


# ---------------------------------------------------------------------------------------------
# naive


def run_naive(o: Options) -> dict[str, Any]:
    import requests

    counter = Counter()
    src = requests.Session()
    src.headers["AccessKey"] = o.damstra_key
    dst = requests.Session()
    dst.headers.update(civica_headers(o))
    started = time.monotonic()
    names = read_groups_sync(src, o, counter)
    start = 0
    done = False
    while not done:
        resp = src.get(
            f"{o.damstra}/api/v2/user",
            params={"activeValue": "all", "startIndex": start, "maxResults": o.page_size},
            timeout=30,
        )
        counter.add(requests=1)
        resp.raise_for_status()
        page = resp.json()["results"]
        if not page:
            break
        for user in page:
            if counter.users + counter.failed >= o.records or time.monotonic() - started >= o.seconds:
                done = True
                break
            migrate_user_sync(dst, o, user, names, counter)
        start += len(page)
    return result(counter, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# raw aiohttp ceiling


async def _raw(o: Options) -> dict[str, Any]:
    import asyncio

    import aiohttp

    counter = Counter()
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8), headers={"AccessKey": o.damstra_key}, timeout=timeout
        ) as src,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=o.connections), headers=civica_headers(o), timeout=timeout
        ) as dst,
    ):
        started = time.monotonic()
        names: dict[int, str] = {}
        start = 0
        while True:
            async with src.get(
                f"{o.damstra}/api/v2/group", params={"startIndex": start, "maxResults": o.page_size}
            ) as resp:
                body = await resp.json()
            counter.add(requests=1)
            names.update({int(g["id"]): g["name"] for g in body["results"]})
            start += len(body["results"])
            if not body["results"] or start >= body["meta"]["totalResultCount"]:
                break

        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(o.workers * 2)

        async def reader() -> None:
            sent, start = 0, 0
            try:
                while sent < o.records and time.monotonic() - started < o.seconds:
                    params = {"activeValue": "all", "startIndex": start, "maxResults": o.page_size}
                    async with src.get(f"{o.damstra}/api/v2/user", params=params) as resp:
                        page = (await resp.json())["results"]
                    counter.add(requests=1)
                    if not page:
                        break
                    for user in page[: o.records - sent]:
                        await queue.put(user)
                        sent += 1
                    start += len(page)
            finally:
                for _ in range(o.workers):
                    await queue.put(None)

        async def set_user(body: dict[str, Any]) -> bool:
            async with dst.post(f"{o.civica}/SetUser", data=json.dumps(body)) as resp:
                await resp.read()
                location = resp.headers.get("Location")
                status_code = resp.status
            counter.add(requests=1)
            if status_code != 202 or not location:
                return False
            pause = o.poll_initial
            while True:
                if pause:
                    await asyncio.sleep(pause)
                async with dst.get(o.civica + location) as resp:
                    status = (await resp.json()).get("status")
                counter.add(requests=1)
                if status in FINAL:
                    return status == 2
                pause = min(max(pause * 2, 0.001), o.poll_max)

        async def worker() -> None:
            while (user := await queue.get()) is not None:
                ok = await set_user(create_body(user, names))
                if ok and is_inactive(user):
                    ok = await set_user(deactivate_body(user))
                counter.add(users=1 if ok else 0, failed=0 if ok else 1)

        await asyncio.gather(reader(), *(worker() for _ in range(o.workers)))
        return result(counter, time.monotonic() - started)


def run_raw(o: Options) -> dict[str, Any]:
    import asyncio

    if o.loop == "uvloop":
        import uvloop

        return uvloop.run(_raw(o))
    return asyncio.run(_raw(o))


# ---------------------------------------------------------------------------------------------
# dlt


def run_dlt(o: Options) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="bench-dlt-")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    parallel = o.workers > 1
    if parallel:
        # the docs' knobs for a parallel load: several files, several load jobs at once
        os.environ["LOAD__WORKERS"] = str(o.workers)
        os.environ["NORMALIZE__DATA_WRITER__FILE_MAX_ITEMS"] = str(max(1, math.ceil(o.records / o.workers)))
    import dlt
    import requests
    from dlt.sources.rest_api import rest_api_source

    counter = Counter()
    local = threading.local()

    def session() -> Any:
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
            s.headers.update(civica_headers(o))
        return s

    started = time.monotonic()
    src = requests.Session()
    src.headers["AccessKey"] = o.damstra_key
    names = read_groups_sync(src, o, counter)

    @dlt.destination(
        batch_size=o.batch_size,
        name="civica_sim",
        max_parallel_load_jobs=o.workers if parallel else None,
        loader_parallelism_strategy="parallel" if parallel else None,
    )
    def civica(items: list[dict[str, Any]], table: dict[str, Any]) -> None:
        s = session()
        THREADS.add(threading.get_ident())
        for user in items:
            migrate_user_sync(s, o, user, names, counter)

    source = rest_api_source(
        {
            "client": {
                "base_url": f"{o.damstra}/api/v2/",
                "auth": {
                    "type": "api_key",
                    "name": "AccessKey",
                    "api_key": o.damstra_key,
                    "location": "header",
                },
                "paginator": {
                    "type": "offset",
                    "limit": o.page_size,
                    "offset_param": "startIndex",
                    "limit_param": "maxResults",
                    "total_path": "meta.totalResultCount",
                    "maximum_offset": o.records,
                },
            },
            "resources": [
                {
                    "name": "users",
                    "endpoint": {
                        "path": "user",
                        "params": {"activeValue": "all"},
                        "data_selector": "results",
                    },
                    "write_disposition": "append",
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        destination=civica,
        pipelines_dir=workdir,
        dataset_name="bench",
        progress=None,
    )
    pipeline.run(source)
    seconds = time.monotonic() - started
    counter.add(requests=math.ceil(o.records / o.page_size))  # the source pages dlt read
    return {**result(counter, seconds), "sink_threads": len(THREADS)}


# ---------------------------------------------------------------------------------------------


def result(counter: Counter, seconds: float) -> dict[str, Any]:
    return {
        "users": counter.users,
        "failed": counter.failed,
        "requests": counter.requests,
        "seconds": round(seconds, 3),
        "users_per_second": round(counter.users / seconds, 1) if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("contestant", choices=["raw", "naive", "dlt"])
    ap.add_argument("--damstra", required=True)
    ap.add_argument("--civica", required=True)
    ap.add_argument("--damstra-key", default=os.environ.get("BENCH_DAMSTRA_KEY", ""))
    ap.add_argument("--civica-key", default=os.environ.get("BENCH_CIVICA_KEY", ""))
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--poll-initial", type=float, default=0.0)
    ap.add_argument("--poll-max", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=10, help="dlt: items per sink call")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="raw: the event loop")
    ap.add_argument("--out", required=True)
    o = ap.parse_args(argv, namespace=Options())
    run = {"raw": run_raw, "naive": run_naive, "dlt": run_dlt}[o.contestant]
    res = run(o)
    with open(o.out, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
