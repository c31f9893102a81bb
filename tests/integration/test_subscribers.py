"""200 concurrent /events subscribers on one ingress share its one PostgreSQL LISTEN
connection (`db.notifications`) and its pool: the cost counted in connections, not in
memory (bench/subscribers.py measures that), and every subscriber still gets every event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pixstream.db.notifications import JobNotifications
from pixstream.ingress import create_app
from pixstream.ingress.progress import NOTIFICATIONS
from pixstream.settings import Settings
from tests.integration.test_progress import lifecycle, messages, write

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.s3]

SUBSCRIBERS = 200
#: asyncpg's pool of the ingress (`db.repository.open_pool`) holds at most this many.
POOL_MAX = 10


async def _connections(settings: Settings) -> tuple[int, int]:
    """(all, LISTENing) backends on the test's database, the counting one left out."""
    dsn = settings.database_url.get_secret_value()
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE query ILIKE 'LISTEN%') AS listening"
            " FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            dsn.rsplit("/", 1)[1],
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["total"]), int(row["listening"])


@pytest.fixture
async def client(topics: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The ingress, and a client session with no cap on its connections (aiohttp's default
    of 100 would queue the other 100 streams)."""
    server = TestServer(create_app(topics), host="127.0.0.1")
    async with TestClient(server, connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


def _notifications(client: TestClient[Any, Any]) -> JobNotifications:
    app: web.Application | None = client.app
    assert app is not None
    return app[NOTIFICATIONS]


async def test_200_subscribers_share_one_listen_connection(
    topics: Settings, client: TestClient[Any, Any]
) -> None:
    job_id = "fan-200"
    first, *rest = lifecycle(job_id)
    await write(topics, job_id, first)

    async with contextlib.AsyncExitStack() as streams:

        async def subscribe() -> Any:
            resp = await streams.enter_async_context(client.get(f"/v1/jobs/{job_id}/events"))
            assert resp.status == 200
            stream = messages(resp)
            assert (await anext(stream)).id == first.id  # the replay
            return stream

        followers = await asyncio.gather(*(subscribe() for _ in range(SUBSCRIBERS)))
        assert _notifications(client).subscribers == SUBSCRIBERS

        total, listening = await _connections(topics)
        assert listening == 1
        assert total <= POOL_MAX + 1  # the pool and the listener, whatever the subscribers

        await write(topics, job_id, *rest)  # one NOTIFY per event wakes all 200

        async def rest_of(stream: Any) -> list[str]:
            return [m.id async for m in stream]

        received = await asyncio.wait_for(asyncio.gather(*(rest_of(s) for s in followers)), 60)
    assert all(ids == [e.id for e in rest] for ids in received)


async def test_the_listener_is_one_connection_before_any_subscriber(
    topics: Settings, client: TestClient[Any, Any]
) -> None:
    # The control: what the test above counts is the listener, not some other connection.
    await asyncio.wait_for(_notifications(client).listening.wait(), 30)
    _, listening = await _connections(topics)
    assert listening == 1
