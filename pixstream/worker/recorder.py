"""The recorder: projects `<prefix>.events` into PostgreSQL, the job records the API reads,
and appends each event to the job's event log (`db.job_events`) in the same transaction, so
the record and the live stream never disagree. Both writes are idempotent, so a replayed
event changes nothing."""

from __future__ import annotations

import logging
from typing import Any

from pixstream.db import job_events
from pixstream.db.repository import apply_event
from pixstream.events import CloudEvent, Data
from pixstream.worker.handling import Message
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)


async def record_event(res: Resources, message: Message[Data]) -> None:
    event = message.event
    await res.write_db(
        lambda conn: record(conn, message.job_id, event),
        what=f"recording {event.type}",
        job_id=message.job_id,
    )


async def record(conn: Any, job_id: str, event: CloudEvent) -> None:
    """Project `event` onto the job's record and append it to the job's log, atomically."""
    async with conn.transaction():
        await apply_event(conn, event)
        await job_events.append(conn, job_id, event)
