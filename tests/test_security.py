"""Security: TLS always verified, keys never echoed, a refused key stops the run at once."""

from __future__ import annotations

import sqlite3
import ssl
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from migrator import api
from migrator.api import MigrationError
from migrator.http import HostClient, HostLimits, HttpError
from migrator.plan import load_plan
from tests.conftest import Sims, write_plan


async def test_tls_certificates_are_always_verified(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        # a certificate from a CA this machine does not trust: refused, not retried, nothing served
        async with HostClient(f"https://127.0.0.1:{port}", limits=HostLimits(rate=100, max_retries=3)) as client:
            with pytest.raises(HttpError) as caught:
                await client.request("GET", "/x")
        assert "certificate" in str(caught.value).lower() or "ssl" in str(caught.value).lower()
        assert seen == []
    finally:
        await runner.cleanup()


async def test_tokens_in_query_strings_are_redacted(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"echo": dict(request.query)}, status=404)

    app = web.Application()
    app.router.add_get("/report", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    secret = "tok-51f0c2aa9e"
    try:
        async with HostClient(f"http://127.0.0.1:{port}", limits=HostLimits(rate=100), secrets=[secret]) as client:
            with pytest.raises(HttpError) as caught:
                await client.request("GET", "/report", params={"token": secret, "page": "2"})
        text = f"{caught.value} {caught.value.path} {caught.value.body_excerpt} {caught.value!r}"
        assert secret not in text and "token=***" in text and "page=2" in text

        # a secret under an innocent name, plain and URL-encoded, and a token the client never heard of
        spaced = "tok 51/f0+c2"
        async with HostClient(f"http://127.0.0.1:{port}", limits=HostLimits(rate=100), secrets=[spaced]) as client:
            with pytest.raises(HttpError) as caught:
                await client.request("GET", "/report?filter=tok%2051%2Ff0%2Bc2", params={"q": spaced, "page": "2"})
            with pytest.raises(HttpError) as unknown:
                await client.request("GET", "/report", params={"token": "never-told-1234", "page": "3"})
        assert caught.value.path == "/report?filter=***&q=***&page=2"
        text = f"{caught.value} {caught.value.body_excerpt}"
        assert spaced not in text and "tok%2051%2Ff0%2Bc2" not in text and "tok+51%2Ff0%2Bc2" not in text
        assert unknown.value.path == "/report?token=***&page=3"
        assert "never-told-1234" not in f"{unknown.value} {unknown.value.body_excerpt}"
    finally:
        await runner.cleanup()


async def test_a_revoked_source_key_stops_the_run_at_the_first_requests(
    sims: Sims, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_DAMSTRA_KEY", "revoked-key-0000")
    plan = load_plan(write_plan(tmp_path, sims))
    with pytest.raises(MigrationError, match="source refused the credentials .*HTTP 401"):
        await api.run(plan)
    refused = sims.damstra.call(lambda s: s.stats.by_status.get(401, 0), sims.damstra.sim)
    assert 1 <= refused <= 3  # the first request of each stream reading at once, no more
    db = sqlite3.connect(plan.ledger_path)
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 0
    assert sims.civica_state()["users"] == {}
