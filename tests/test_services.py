"""tools.services: a real Prefect server on loopback, backed by a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.slow  # the session's server takes some seconds to start (once)


_open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # loopback: never via a proxy


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with _open(req, timeout=30) as r:
        assert r.status in (200, 201)
        return json.load(r)


def test_health(prefect_server) -> None:
    with _open(f"{prefect_server.api_url}/health", timeout=10) as r:
        assert r.status == 200
        assert json.load(r) is True
    env = prefect_server.env()
    assert env["PREFECT_API_URL"] == prefect_server.api_url
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_server_writes_to_postgres(prefect_server) -> None:
    if prefect_server.db_url is None:
        pytest.skip("external server without GENMOCAP_TEST_PG_URL")
    asyncpg = pytest.importorskip("asyncpg")
    name = f"genmocap-services-{uuid.uuid4().hex[:12]}"
    flow = _post(f"{prefect_server.api_url}/flows/", {"name": name})

    async def read() -> tuple[object, object]:
        conn = await asyncpg.connect(prefect_server.db_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            table = await conn.fetchval("SELECT to_regclass('flow_run')::text")
            row = await conn.fetchval("SELECT name FROM flow WHERE id = $1", uuid.UUID(str(flow["id"])))
            return table, row
        finally:
            await conn.close()

    table, row = asyncio.run(read())
    assert table == "flow_run"
    assert row == name
