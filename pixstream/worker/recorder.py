"""The recorder: projects `<prefix>.events` into PostgreSQL, the job records the API reads.
Upserts are idempotent, so a replayed event changes nothing."""

from __future__ import annotations

import logging

from pixstream import errors
from pixstream.db.repository import apply_event
from pixstream.events import CloudEvent
from pixstream.worker.records import Record
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)


async def record_event(res: Resources, record: Record) -> None:
    try:
        event = CloudEvent.parse(record.value or b"")
    except errors.InvalidEvent:
        return  # the tracker dead-letters it
    try:
        await res.write_db(
            lambda conn: apply_event(conn, event),
            what=f"recording {event.type}",
            job_id=record.key_text,
        )
    except errors.InvalidEvent as exc:
        log.warning("event not recorded: %s", exc, extra={"job_id": record.key_text})
