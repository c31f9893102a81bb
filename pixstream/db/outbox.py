"""The ingress's outbox in PostgreSQL: messages committed with the rows they announce, taken
by a relay under a lease, deleted once the broker acknowledged them.

Writing the message in the job's own transaction is what makes a 202 and the event one fact:
the commit either happened (the relay will publish, however often it must retry or restart)
or did not (nothing runs). A relay that dies after the broker's ack but before the delete
publishes the row again; a repeated job.requested is harmless downstream.

A row is written under its writer's lease: the process that committed it publishes it from
memory right after the commit, with no claim; only should that process die first does another
relay take the row, once the lease has run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

#: Longer than a send can take (the producer's request timeout), so a live relay's rows are
#: never taken over by another.
LEASE_SECONDS: Final = 60.0

INSERT: Final = """
INSERT INTO outbox (topic, key, value, claimed_until)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING id
"""

# Oldest first; a row another relay holds under a live lease is skipped, not waited for.
CLAIM: Final = """
UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
WHERE id IN (
    SELECT id FROM outbox
    WHERE claimed_until IS NULL OR claimed_until < now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, topic, key, value
"""

DELETE: Final = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

RELEASE: Final = "UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1::bigint[])"

BACKLOG: Final = """
SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
FROM outbox
"""


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    topic: str
    key: str
    value: bytes


async def add(conn: Any, topic: str, key: str, value: bytes) -> Message:
    """Queue a message, leased to its writer; run it in the transaction of the rows it
    announces, and hand it to this process's relay once that has committed."""
    return Message(
        int(await conn.fetchval(INSERT, topic, key, value, LEASE_SECONDS)), topic, key, value
    )


async def claim(conn: Any, limit: int, lease_seconds: float) -> list[Message]:
    rows = await conn.fetch(CLAIM, limit, lease_seconds)
    return sorted(
        (Message(r["id"], r["topic"], r["key"], bytes(r["value"])) for r in rows),
        key=lambda m: m.id,
    )


async def published(conn: Any, ids: list[int]) -> None:
    await conn.execute(DELETE, ids)


async def release(conn: Any, ids: list[int]) -> None:
    """Give messages back for the next attempt, without waiting for the lease to run out."""
    await conn.execute(RELEASE, ids)


async def backlog(conn: Any) -> tuple[int, float]:
    """(messages waiting, age in seconds of the oldest)."""
    row = await conn.fetchrow(BACKLOG)
    return int(row["n"]), float(row["oldest"])
