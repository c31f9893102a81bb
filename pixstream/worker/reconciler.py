"""The reconciler: a job that made no progress for `stall_seconds` while nothing waits in
the worker's topics is re-driven from its PostgreSQL record, and failed with `stalled` after
`max_redrives` tries.

A 202 promises that the job finishes. Every effect downstream is idempotent, so sending a
stuck job through the pipeline again is harmless; this covers any message a consumer lost
(faust-streaming can commit offsets past messages it never handed to an agent when a worker
dies and its partitions move; see docs/design.md). It runs only while the process's planner
and op agents are idle, so a backlog (which may hold the job) never triggers re-drives that
would add work when there is already too much.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from mode import Service

from pixstream.events import (
    JOB_FAILED,
    JOB_REQUESTED,
    ErrorInfo,
    JobFailed,
    JobRequested,
    SourceKey,
    make_event,
)
from pixstream.spec import StepSpec
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

# Claims stuck jobs and bumps their clock, so each is re-driven by one process once a period.
CLAIM_STALLED = """
UPDATE jobs SET redrives = redrives + 1, updated_at = now()
WHERE job_id IN (
    SELECT job_id FROM jobs
    WHERE status IN ('queued', 'processing')
      AND updated_at < now() - make_interval(secs => $1)
      AND steps_total > 0
    ORDER BY updated_at
    LIMIT 50
    FOR UPDATE SKIP LOCKED
)
RETURNING job_id, spec::text AS spec, source_key, webhook_url, redrives
"""


class Reconciler(Service):
    """Looks for stalled jobs every quarter of `stall_seconds` (at most every 30 s), when
    this process's planner and op agents have been idle for that long."""

    def __init__(self, res: Resources, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.res = res

    @Service.task
    async def _sweep(self) -> None:
        res = await self.res.ready()
        period = min(res.settings.stall_seconds / 4, 30.0)
        while not self.should_stop:
            await self.sleep(period)
            if res.idle_seconds() < period:
                continue  # a backlog is being worked through: an unfinished job may be in it
            try:
                async with res.pool.acquire() as conn:
                    stalled = await conn.fetch(CLAIM_STALLED, res.settings.stall_seconds)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("reconciler: %s", exc)  # PostgreSQL away: try next period
                continue
            for row in stalled:
                await self._redrive(dict(row))

    async def _redrive(self, row: dict[str, Any]) -> None:
        res = self.res
        job_id = row["job_id"]
        spec = json.loads(row["spec"])
        extra = {"job_id": job_id, "redrives": row["redrives"]}
        if row["redrives"] > res.settings.max_redrives or row["source_key"] is None:
            log.error("job stalled; failing it", extra=extra)
            failed = JobFailed(
                job_id=job_id,
                errors=[
                    ErrorInfo(
                        step=None,
                        code="stalled",
                        message="the job made no progress and was given up",
                    )
                ],
                webhook_url=row["webhook_url"],
            )
            await res.emit(make_event(JOB_FAILED, failed), key=job_id)
            return
        log.warning("job stalled; sending it through the pipeline again", extra=extra)
        request = JobRequested(
            job_id=job_id,
            steps=[StepSpec.model_validate(s) for s in spec["steps"]],
            webhook_url=row["webhook_url"],
            source=SourceKey(key=row["source_key"]),
        )
        await res.send(
            res.settings.topic("jobs"),
            make_event(JOB_REQUESTED, request).to_bytes(),
            key=job_id,
            headers=[("pixstream-redrive", str(row["redrives"]).encode())],
        )
