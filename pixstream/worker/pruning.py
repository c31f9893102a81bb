"""Bounded state: what the worker keeps is deleted once nobody can need it.

- PostgreSQL (one process at a time, under an advisory lock): ended jobs and their event logs,
  idempotency keys, finished webhook deliveries older than `prune_after_seconds`; dead-letter
  replays once their dead letter has expired from the DLQ too (else a replay could run twice).
- The tracker's table: ended jobs older than `prune_after_seconds` are deleted, which writes
  a tombstone to the compacted changelog, so memory and recovery time stay bounded. Each
  process prunes only the partitions it owns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any, Final

from mode import Service

from pixstream import metrics
from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.topics import load_topics
from pixstream.worker.reconciler import partition_for
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

PRUNE_LOCK: Final = 0x70697873  # "pixs": one pruner across the worker processes
PRUNE_SQL: Final = {
    # Before the jobs they belong to (the dict's order is the order of the deletes).
    "job_events": "DELETE FROM job_events WHERE job_id IN (SELECT job_id FROM jobs"
    " WHERE status IN ('completed', 'failed') AND finished_at < now() - make_interval(secs => $1))",
    "jobs": "DELETE FROM jobs WHERE status IN ('completed', 'failed')"
    " AND finished_at < now() - make_interval(secs => $1)",
    "idempotency_keys": "DELETE FROM idempotency_keys"
    " WHERE created_at < now() - make_interval(secs => $1)",
    "webhook_deliveries": "DELETE FROM webhook_deliveries WHERE state <> 'pending'"
    " AND updated_at < now() - make_interval(secs => $1)",
    "render_starts": "DELETE FROM render_starts"
    " WHERE updated_at < now() - make_interval(secs => $1)",
    # Past their expiry the entries are never read (a new render claims the key over them).
    "renditions": "DELETE FROM renditions"
    " WHERE coalesce(expires_at, claimed_until) < now() - make_interval(secs => $1)",
}
PRUNE_REPLAYS: Final = (
    "DELETE FROM dead_letter_replays WHERE replayed_at < now() - make_interval(secs => $1)"
)


def _deleted(status: str) -> int:
    """The row count of an asyncpg status string such as 'DELETE 12'."""
    return int(status.rsplit(" ", 1)[-1]) if status.startswith("DELETE") else 0


async def prune_database(conn: Any, older_than: float, replays_older_than: float) -> dict[str, int]:
    """Delete what is older than the limits; the rows deleted per table (empty when another
    process holds the pruning lock)."""
    # A transaction's lock: it ends with the transaction, so a pooled connection never
    # carries it to its next user (the pools skip asyncpg's session reset).
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
            return {}
        counts = {
            table: _deleted(await conn.execute(sql, float(older_than)))
            for table, sql in PRUNE_SQL.items()
        }
        replays = await conn.execute(PRUNE_REPLAYS, float(replays_older_than))
        counts["dead_letter_replays"] = _deleted(replays)
        return counts


class TablePruner:
    """Deletes ended jobs from the tracker's table, from inside the lifecycle agent: Faust
    writes a table's changelog only for the event being handled (to its partition), so each
    event may prune the entries of its own partition, at most once a minute per partition."""

    EVERY_SECONDS: Final = 60.0

    def __init__(self, table: MutableMapping[str, Any], partitions: int, older_than: float):
        self.table = table
        self.partitions = partitions
        self.older_than = older_than
        self._last: dict[int, float] = {}

    def after(self, partition: int, now: float | None = None) -> int:
        """Prune `partition` if due; the number of entries deleted."""
        now = time.time() if now is None else now
        if now - self._last.get(partition, 0.0) < self.EVERY_SECONDS:
            return 0
        self._last[partition] = now
        stale = []
        for job_id, raw in list(self.table.items()):
            # The stored JSON of a JobProgress; reading one field keeps a sweep cheap.
            finished = raw.get("finished_at") if isinstance(raw, dict) else None
            if (
                isinstance(finished, int | float)
                and finished < now - self.older_than
                and partition_for(job_id, self.partitions) == partition
            ):
                stale.append(job_id)
        for job_id in stale:
            del self.table[job_id]
        metrics.TRACKER_JOBS.set(len(self.table))
        return len(stale)


class Pruner(Service):
    """Prunes every `prune_interval_seconds`."""

    def __init__(self, res: Resources, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.res = res

    @Service.task
    async def _prune(self) -> None:
        res = await self.res.ready()
        s = res.settings
        topics = {t.name: t for t in load_topics(s)}
        dlq_retention = float(topics[s.topic("dlq")].config.get("retention.ms", 0)) / 1000
        while not self.should_stop:
            await self.sleep(s.prune_interval_seconds)
            try:
                async with translated(), self.res.pool.acquire() as conn:
                    rows = await prune_database(
                        conn, s.prune_after_seconds, max(s.prune_after_seconds, dlq_retention)
                    )
            except DatabaseUnavailable as exc:
                log.warning("pruning PostgreSQL: %s; next time", exc)
                continue
            if any(rows.values()):
                log.info("pruned %s", rows, extra={"pruned": rows})
