"""The webhook delivery queue in PostgreSQL (`webhook_deliveries`): enqueue a terminal event,
claim due deliveries under a lease, and record what an attempt did.

Every worker process polls the same table; `FOR UPDATE SKIP LOCKED` and the lease keep two of
them from sending one delivery at once, and an expired lease hands a dead worker's work on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# A redelivered terminal event has the same id, so it enqueues nothing the second time.
INSERT_DELIVERY: Final = """
INSERT INTO webhook_deliveries (event_id, job_id, url, body)
VALUES ($1, $2, $3, $4)
ON CONFLICT (event_id) DO NOTHING
"""

# The lease is a next_attempt_at in the future: the row is not due for anyone else until the
# claimer records a result or dies and the lease runs out. `attempts` counts real attempts, so
# claiming does not change it.
CLAIM_DUE: Final = """
UPDATE webhook_deliveries
SET next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
WHERE event_id IN (
    SELECT event_id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING event_id, job_id, url, body, attempts,
    -- The job's tenant's secrets at the time of sending (empty: the anonymous tenant's, or a
    -- tenant without one of its own, which sign with PIXSTREAM_WEBHOOK_SECRET).
    ARRAY(
        SELECT s.secret FROM webhook_secrets s
        WHERE s.tenant = (SELECT j.tenant FROM jobs j WHERE j.job_id = webhook_deliveries.job_id)
          AND (s.retired_at IS NULL OR s.retired_at > now() - make_interval(secs => $3))
        ORDER BY s.id DESC
    ) AS secrets
"""

# The result updates below only touch a pending row: a worker whose lease ran out while it was
# sending must not turn a row that another worker has since finished back into something else.
MARK_DELIVERED: Final = """
UPDATE webhook_deliveries
SET state = 'delivered', attempts = $2, last_status = $3, last_error = NULL,
    delivered_at = now(), updated_at = now()
WHERE event_id = $1 AND state = 'pending'
"""

SCHEDULE_RETRY: Final = """
UPDATE webhook_deliveries
SET attempts = $2, last_status = $3, last_error = $4,
    next_attempt_at = now() + make_interval(secs => $5), updated_at = now()
WHERE event_id = $1 AND state = 'pending'
"""

# An open circuit breaker: nothing was sent, so the attempt budget is left alone.
POSTPONE: Final = """
UPDATE webhook_deliveries
SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
WHERE event_id = $1 AND state = 'pending'
"""

# failed, gone or refused: no more attempts.
MARK_FINISHED: Final = """
UPDATE webhook_deliveries
SET state = $2, attempts = $3, last_status = $4, last_error = $5, updated_at = now()
WHERE event_id = $1 AND state = 'pending'
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed row: what to send where, signed with which of its tenant's secrets, and how
    many attempts it has had."""

    event_id: str
    job_id: str
    url: str
    body: bytes
    attempts: int
    secrets: tuple[str, ...] = ()


async def enqueue(conn: Any, event_id: str, job_id: str, url: str, body: bytes) -> None:
    await conn.execute(INSERT_DELIVERY, event_id, job_id, url, body)


async def claim_due(
    conn: Any, limit: int, lease_seconds: float, rotation_seconds: float
) -> list[Delivery]:
    """Up to `limit` due deliveries, leased for `lease_seconds`; a secret retired less than
    `rotation_seconds` ago still signs."""
    rows = await conn.fetch(CLAIM_DUE, limit, lease_seconds, rotation_seconds)
    return [
        Delivery(
            r["event_id"],
            r["job_id"],
            r["url"],
            bytes(r["body"]),
            r["attempts"],
            tuple(r["secrets"]),
        )
        for r in rows
    ]


async def mark_delivered(conn: Any, event_id: str, attempts: int, status: int | None) -> None:
    await conn.execute(MARK_DELIVERED, event_id, attempts, status)


async def schedule_retry(
    conn: Any,
    event_id: str,
    attempts: int,
    status: int | None,
    error: str | None,
    delay_seconds: float,
) -> None:
    await conn.execute(SCHEDULE_RETRY, event_id, attempts, status, error, delay_seconds)


async def postpone(conn: Any, event_id: str, error: str | None, delay_seconds: float) -> None:
    await conn.execute(POSTPONE, event_id, error, delay_seconds)


async def mark_finished(
    conn: Any, event_id: str, state: str, attempts: int, status: int | None, error: str | None
) -> None:
    await conn.execute(MARK_FINISHED, event_id, state, attempts, status, error)
