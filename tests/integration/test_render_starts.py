"""The crash count of a render lives in PostgreSQL, so it survives the worker that died."""

from __future__ import annotations

import asyncpg
import pytest

from pixstream.db import render_starts
from pixstream.worker.steps import MAX_CRASHES

pytestmark = pytest.mark.postgres


async def test_starts_without_an_answer_accumulate_across_connections(database_url: str) -> None:
    first = await asyncpg.connect(database_url)
    try:
        assert await render_starts.start(first, "job-1.task.requested.web", "job-1") == 1
    finally:
        await first.close()  # as a worker SIGKILLed mid-render would leave it
    conn = await asyncpg.connect(database_url)
    try:
        assert await render_starts.start(conn, "job-1.task.requested.web", "job-1") == 2
        # The third delivery finds MAX_CRASHES interrupted starts: the task is failed.
        assert await render_starts.start(conn, "job-1.task.requested.web", "job-1") - 1 >= (
            MAX_CRASHES
        )
        await render_starts.conclude(conn, "job-1.task.requested.web")
        assert await conn.fetchval("SELECT count(*) FROM render_starts") == 0
    finally:
        await conn.close()
