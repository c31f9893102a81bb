"""The log of each job's lifecycle events in PostgreSQL, the source of GET /v1/jobs/{id}/events.

The recorder appends an event in the transaction that projects it onto `jobs`, and notifies
`CHANNEL` with the job id; the notification is only a wake-up (delivered at commit, possibly
lost while the listener reconnects): subscribers always read the rows after their cursor.

A retried job's log goes on past its terminal event: `pixstream.job.retried` (written by the
ingress in the transaction that accepts the retry) opens a new run, so a terminal event ends
the stream only when no retry follows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pixstream.events import JOB_RETRIED, TERMINAL_TYPES, CloudEvent

#: The LISTEN/NOTIFY channel; the payload is the job id.
CHANNEL: Final = "pixstream_job_events"
#: Rows read at once by one subscriber: what bounds its memory, however long the job's log.
PAGE: Final = 100

# A redelivered event keeps its first row (event ids are deterministic per job and step).
APPEND: Final = """
INSERT INTO job_events (event_id, job_id, type, event)
VALUES ($1, $2, $3, $4::text::jsonb)
ON CONFLICT (event_id) DO NOTHING
RETURNING seq
"""
# The recorder's batch: the same, in the batch's order, and one wake-up per job.
APPEND_MANY: Final = """
INSERT INTO job_events (event_id, job_id, type, event)
SELECT e.event_id, e.job_id, e.type, e.event::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
    AS e(event_id, job_id, type, event, n)
ORDER BY e.n
ON CONFLICT (event_id) DO NOTHING
RETURNING job_id
"""
NOTIFY: Final = "SELECT pg_notify($1, $2)"
NOTIFY_MANY: Final = "SELECT pg_notify($1, j) FROM unnest($2::text[]) AS j"
_COLUMNS: Final = "seq, event_id, type, event::text AS event"
SELECT_AFTER: Final = f"""
SELECT {_COLUMNS} FROM job_events
WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""
SELECT_EVENT: Final = f"SELECT {_COLUMNS} FROM job_events WHERE job_id = $1 AND event_id = $2"
SELECT_RETRIED_AFTER: Final = """
SELECT EXISTS (SELECT 1 FROM job_events WHERE job_id = $1 AND seq > $2 AND type = $3)
"""


@dataclass(frozen=True)
class StoredEvent:
    """One row of the log: its position, and the CloudEvent as JSON text."""

    seq: int
    event_id: str
    type: str
    json: str

    @property
    def terminal(self) -> bool:
        """A terminal event; whether it ends the job's stream is `ends_stream`'s question."""
        return self.type in TERMINAL_TYPES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredEvent:
        """The one decoding of a row selected with `_COLUMNS`."""
        return cls(row["seq"], row["event_id"], row["type"], row["event"])


async def append(conn: Any, job_id: str, event: CloudEvent) -> bool:
    """Add `event` to the log of `job_id` and wake its subscribers; False for a duplicate.

    Run it in the transaction of the projection's update, so a subscriber never sees the
    record changed without its event (or the reverse)."""
    seq = await conn.fetchval(APPEND, event.id, job_id, event.type, event.model_dump_json())
    if seq is None:
        return False
    await conn.execute(NOTIFY, CHANNEL, job_id)
    return True


async def append_many(conn: Any, events: Sequence[tuple[str, CloudEvent]]) -> int:
    """`append` of each (job id, event) in order, in two statements; returns how many were
    new (duplicates, within the batch too, keep their first row). Each job with a new event
    is woken once: a subscriber reads every row after its cursor anyway."""
    if not events:
        return 0
    rows = await conn.fetch(
        APPEND_MANY,
        [event.id for _, event in events],
        [job_id for job_id, _ in events],
        [event.type for _, event in events],
        [event.model_dump_json() for _, event in events],
    )
    woken = list(dict.fromkeys(row["job_id"] for row in rows))
    if woken:
        await conn.execute(NOTIFY_MANY, CHANNEL, woken)
    return len(rows)


async def read_after(conn: Any, job_id: str, seq: int, limit: int = PAGE) -> list[StoredEvent]:
    """Up to `limit` events of the job after position `seq`, oldest first."""
    rows = await conn.fetch(SELECT_AFTER, job_id, seq, limit)
    return [StoredEvent.from_row(r) for r in rows]


async def find(conn: Any, job_id: str, event_id: str) -> StoredEvent | None:
    """The job's logged event `event_id`; None when the job has no such event."""
    row = await conn.fetchrow(SELECT_EVENT, job_id, event_id)
    return StoredEvent.from_row(row) if row is not None else None


async def ends_stream(conn: Any, job_id: str, event: StoredEvent) -> bool:
    """Whether the job's stream ends at `event`: a terminal event no retry has reopened
    since (asks the database only for a terminal event)."""
    return event.terminal and not await retried_after(conn, job_id, event.seq)


async def retried_after(conn: Any, job_id: str, seq: int) -> bool:
    """Whether a retry of the job was logged after position `seq` (a new run follows)."""
    return bool(await conn.fetchval(SELECT_RETRIED_AFTER, job_id, seq, JOB_RETRIED))
