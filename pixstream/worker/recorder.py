"""The recorder: projects `<prefix>.events` into PostgreSQL, the job records the API reads.
Upserts are idempotent, so a replayed event changes nothing."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from pixstream import errors
from pixstream.db.repository import apply_event
from pixstream.events import CloudEvent
from pixstream.worker.records import Record
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)
BACKOFF_MAX_SECONDS = 10.0


async def record_event(res: Resources, record: Record) -> None:
    try:
        event = CloudEvent.parse(record.value or b"")
    except errors.InvalidEvent:
        return  # the tracker dead-letters it
    delay = 0.5
    while True:
        try:
            async with res.pool.acquire() as conn:
                await apply_event(conn, event)
            return
        except errors.InvalidEvent as exc:
            log.warning("event not recorded: %s", exc, extra={"job_id": record.key_text})
            return  # the tracker dead-letters it
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            # PostgreSQL is down: wait for it rather than let Faust acknowledge the event.
            if res.should_stop:
                raise
            log.warning(
                "recording %s failed (%s); retrying in %.1fs",
                event.type,
                exc,
                delay,
                extra={"job_id": record.key_text},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
