"""The recorder: projects `<prefix>.events` into PostgreSQL, the job records the API reads.
Upserts are idempotent, so a replayed event changes nothing."""

from __future__ import annotations

import logging

from pixstream.db.repository import apply_event
from pixstream.events import Data
from pixstream.worker.handling import Message
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)


async def record_event(res: Resources, message: Message[Data]) -> None:
    event = message.event
    await res.write_db(
        lambda conn: apply_event(conn, event), what=f"recording {event.type}", job_id=message.job_id
    )
