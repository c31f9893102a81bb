"""The render-once index on a real PostgreSQL: one claim per key at a time, ready entries
per tenant, expiry, and lapsed claims taken over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pixstream.contentkeys import ContentKey
from pixstream.db import renditions

pytestmark = pytest.mark.postgres

OUTPUT: dict[str, Any] = {"kind": "image", "key": "processed/j1/web.jpg", "format": "jpeg",
                          "width": 8, "height": 8, "bytes": 100}  # fmt: skip


def key(tenant: str = "acme", chain: str = "c1") -> ContentKey:
    return ContentKey(tenant, "sha", chain, "engine/1", ({"op": "resize", "params": {}},))


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def test_one_task_holds_a_claim_and_its_redelivery_holds_it_too(conn: Any) -> None:
    assert await renditions.claim(conn, key(), "task-1", 30)
    assert not await renditions.claim(conn, key(), "task-2", 30)
    assert await renditions.claim(conn, key(), "task-1", 30)  # the same task, redelivered
    entry = (await renditions.lookup(conn, [key()]))["c1"]
    assert not entry.ready
    assert entry.claimed_by == "task-1"


async def test_a_released_or_lapsed_claim_is_taken_over(conn: Any) -> None:
    assert await renditions.claim(conn, key(), "task-1", 30)
    await renditions.release(conn, [key()], "task-1")
    assert await renditions.claim(conn, key(), "task-2", 30)
    await conn.execute("UPDATE renditions SET claimed_until = now() - interval '1 second'")
    assert await renditions.lookup(conn, [key()]) == {}  # a lapsed claim is no entry
    assert await renditions.claim(conn, key(), "task-3", 30)


async def test_a_kept_output_is_found_for_its_tenant_only(conn: Any) -> None:
    assert await renditions.claim(conn, key(), "task-1", 30)
    await renditions.keep(conn, key(), job_id="j1", object_key=OUTPUT["key"], output=OUTPUT,
                          retain_seconds=3600)  # fmt: skip
    entry = (await renditions.lookup(conn, [key()]))["c1"]
    assert entry.ready
    assert (entry.job_id, entry.object_key, entry.output) == ("j1", OUTPUT["key"], OUTPUT)
    assert not await renditions.claim(conn, key(), "task-2", 30)  # nothing to render
    assert await renditions.lookup(conn, [key(tenant="other")]) == {}
    assert await renditions.claim(conn, key(tenant="other"), "task-3", 30)


async def test_an_expired_entry_is_claimed_again_and_a_live_one_never_replaced(conn: Any) -> None:
    await renditions.keep(conn, key(), job_id="j1", object_key="a", output=OUTPUT,
                          retain_seconds=3600)  # fmt: skip
    await renditions.keep(conn, key(), job_id="j2", object_key="b", output=OUTPUT,
                          retain_seconds=3600)  # fmt: skip
    assert (await renditions.lookup(conn, [key()]))["c1"].job_id == "j1"  # the first one kept
    await conn.execute("UPDATE renditions SET expires_at = now() - interval '1 second'")
    assert await renditions.lookup(conn, [key()]) == {}
    assert await renditions.claim(conn, key(), "task-2", 30)


async def test_forget_drops_an_entry_whose_object_is_gone(conn: Any) -> None:
    await renditions.keep(conn, key(), job_id="j1", object_key="a", output=OUTPUT,
                          retain_seconds=3600)  # fmt: skip
    await renditions.forget(conn, key(), "j1")
    assert await renditions.lookup(conn, [key()]) == {}
