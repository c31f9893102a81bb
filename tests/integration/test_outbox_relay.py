"""The outbox relay on real PostgreSQL and Kafka: a message its own process committed is
published from memory, with no claim; a row another process committed under its lease is
left alone while that lease runs and published once it is over (that process died between
its commit and its publish)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pixstream import kafka
from pixstream.db import outbox
from pixstream.ingress.relay import OutboxRelay
from pixstream.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def pool(topics: Settings) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(topics.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def commit(pool: Any, topic: str, key: str) -> outbox.Message:
    """What a request's transaction writes to the outbox."""
    async with pool.acquire() as conn, conn.transaction():
        return await outbox.add(conn, topic, key, f"request of {key}".encode())


async def published_keys(settings: Settings) -> list[str]:
    async with kafka.open_consumer(settings, settings.topic("jobs"), group_id=None) as consumer:
        batch = await consumer.getmany(timeout_ms=5000)
    return [r.key.decode() for records in batch.values() for r in records]


async def test_a_handed_message_is_published_and_a_dead_writers_row_waits_for_its_lease(
    topics: Settings, pool: Any
) -> None:
    relay = OutboxRelay(pool, topics)
    try:
        assert await relay.publish_once() == 0  # the first round polls the table: empty
        relay.hand(await commit(pool, topics.topic("jobs"), "ours"))
        orphan = await commit(pool, topics.topic("jobs"), "orphan")  # its writer died
        assert await relay.publish_once() == 1  # the handed one; no poll is due yet
        async with pool.acquire() as conn:
            assert [r["key"] for r in await conn.fetch("SELECT key FROM outbox")] == ["orphan"]
            relay._next_poll = 0.0  # a poll is due
            assert await relay.publish_once() == 0  # leased to its writer: not taken
            await conn.execute(
                "UPDATE outbox SET claimed_until = now() - interval '1 second' WHERE id = $1",
                orphan.id,
            )
            relay._next_poll = 0.0
            assert await relay.publish_once() == 1  # the lease is over
            assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.drain()
    assert sorted(await published_keys(topics)) == ["orphan", "ours"]


async def test_what_was_in_flight_when_the_relay_was_cancelled_is_published_by_the_drain(
    topics: Settings, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = OutboxRelay(pool, topics)
    relay.hand(await commit(pool, topics.topic("jobs"), "earlier"))
    assert await relay.publish_once() == 1  # the producer is started, the first poll done
    took = asyncio.Event()
    take = relay._take

    async def taken() -> list[outbox.Message]:
        messages = await take()
        took.set()
        return messages

    monkeypatch.setattr(relay, "_take", taken)
    relay.hand(await commit(pool, topics.topic("jobs"), "in-flight"))
    publishing = asyncio.create_task(relay.publish_once())
    await took.wait()  # the task is now waiting on the broker's acknowledgement
    publishing.cancel()  # the ingress stops
    with pytest.raises(asyncio.CancelledError):
        await publishing
    await relay.drain()
    async with pool.acquire() as conn:  # not left leased to a process about to exit
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    assert "in-flight" in await published_keys(topics)
