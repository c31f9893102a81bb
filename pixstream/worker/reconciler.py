"""The reconciler, a safety net a healthy run never needs: it acts on a job only when the
facts say nothing will move it.

A job is stalled when its PostgreSQL record shows no progress for `stall_seconds` and
nothing for it waits anywhere: on every topic the worker's group consumes (the jobs topics,
every op topic, every retry tier, the events topic) the partition its key maps to has been
handled to its end (the group's committed offset equals the log end: with `commits`, an
offset is committed only past handled messages, so a task still rendering, or parked in a
retry tier, holds it), and no unreplayed dead letter carries its key (that one waits for
`pixstream dlq replay`). Those are the broker's facts, the same for every process.

A stalled job is sent through the pipeline again (everything is idempotent); after
`max_redrives` it is failed with `stalled` by step failures on the events topic, so the
tracker ends it (once) and drops whatever may still arrive for it. A retried job (run > 0)
is sent again as its run's job.retried, keeping every output recorded so far, and failed in
that run: a job.requested would re-render the outputs the retry kept, in a run nobody counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from mode import Service

from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.dlq import read_dead_letters, replayed_ids
from pixstream.events import (
    JOB_REQUESTED,
    JOB_RETRIED,
    OUTPUT,
    STEP_FAILED,
    CloudEvent,
    JobRequested,
    JobRetried,
    SourceKey,
    StepFailed,
    make_event,
)
from pixstream.ops import OPERATIONS
from pixstream.ownership import with_tenant
from pixstream.plan import Plan
from pixstream.redelivery import REDRIVE, TIERS
from pixstream.rerun import kept_outputs
from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE, JobSpec, StepSpec
from pixstream.topics import jobs_topic, lane_topics, load_topics
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

STALLED: Final = "stalled"
PERIOD_MAX_SECONDS: Final = 15.0

SELECT_QUIET: Final = """
SELECT job_id, spec::text AS spec, source_key, webhook_url, redrives, steps::text AS steps,
       updated_at, tenant, run
FROM jobs
WHERE status IN ('queued', 'processing') AND steps_total > 0
  AND updated_at < now() - make_interval(secs => $1)
ORDER BY updated_at LIMIT 50
"""

# Claims one stalled job for this process: only the process whose update matched acts on it.
CLAIM: Final = """
UPDATE jobs SET redrives = redrives + 1, updated_at = now()
WHERE job_id = $1 AND updated_at = $2
RETURNING redrives
"""


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (aiokafka's and Java's) gives `key`."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Backlog:
    """What waits, from the broker: per topic, the partitions the group has not handled to
    their end, and the keys of dead letters nobody replayed."""

    partitions: Mapping[str, int]  # topic -> partition count
    unfinished: frozenset[tuple[str, int]]
    dead_letter_keys: frozenset[str]

    def holds(self, job_id: str) -> bool:
        if job_id in self.dead_letter_keys:
            return True
        return any(
            (topic, partition_for(job_id, n)) in self.unfinished
            for topic, n in self.partitions.items()
        )


async def read_backlog(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    partitions: Mapping[str, int],
    dead_letter_keys: Iterable[str],
) -> Backlog:
    committed = await admin.list_consumer_group_offsets(group)
    # A declared topic the broker does not have yet (`pixstream topics apply` not run since it
    # was declared) holds nothing, and asking for its offsets would time out the whole sweep.
    present = await consumer.topics()
    tps = [TopicPartition(t, p) for t, n in partitions.items() if t in present for p in range(n)]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    unfinished = set()
    for tp in tps:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        if position < ends[tp]:
            unfinished.add((tp.topic, tp.partition))
    return Backlog(dict(partitions), frozenset(unfinished), frozenset(dead_letter_keys))


def unresolved_outputs(spec: Mapping[str, Any], steps: Mapping[str, Any]) -> list[StepSpec]:
    """The outputs of a recorded job that have no result yet."""
    plan = Plan.from_spec(JobSpec(steps=[StepSpec.model_validate(s) for s in spec["steps"]]))
    return [plan.steps[s].spec for s in plan.outputs if s not in steps]


class Reconciler(Service):
    """Sweeps every quarter of `stall_seconds` (at most every 15 s)."""

    def __init__(self, res: Resources, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.res = res
        self.topics = group_topics(res.settings)
        self.redrives = 0  # this process's, for the fault suite's report

    @Service.task
    async def _sweep(self) -> None:
        res = await self.res.ready()
        s = res.settings
        counts = {t.name: t.partitions for t in load_topics(s) if t.name in set(self.topics)}
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            while not self.should_stop:
                await self.sleep(min(s.stall_seconds / 4, PERIOD_MAX_SECONDS))
                try:
                    await self._once(admin, consumer, counts)
                except (KafkaError, DatabaseUnavailable, OSError) as exc:
                    log.warning("reconciler: %s", exc)  # a dependency away: next period
        finally:
            await consumer.stop()
            await admin.close()

    async def _once(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, counts: Mapping[str, int]
    ) -> None:
        res = self.res
        async with translated(), res.pool.acquire() as conn:
            quiet = [dict(r) for r in await conn.fetch(SELECT_QUIET, res.settings.stall_seconds)]
            if not quiet:
                return
            done = await replayed_ids(conn, res.settings.topic("dlq"))
        letters = await read_dead_letters(res.settings)
        waiting_keys = {(d.key or b"").decode() for d in letters if d.id not in done}
        backlog = await read_backlog(admin, consumer, res.settings.app_id, counts, waiting_keys)
        for job in quiet:
            if backlog.holds(job["job_id"]):
                continue
            async with translated(), res.pool.acquire() as conn:
                redrives = await conn.fetchval(CLAIM, job["job_id"], job["updated_at"])
            if redrives is not None:
                await self._act(job, redrives)

    async def _act(self, job: dict[str, Any], redrives: int) -> None:
        res = self.res
        job_id = job["job_id"]
        spec = json.loads(job["spec"])
        extra = {"job_id": job_id, "redrives": redrives}
        self.redrives += 1
        request = JobRequested(
            job_id=job_id,
            steps=[StepSpec.model_validate(s) for s in spec["steps"]],
            webhook_url=job["webhook_url"],
            source=SourceKey(key=job["source_key"] or Plan.raw_key(job_id, "unknown")),
            priority=spec.get("priority", INTERACTIVE),
        )
        run: int = job.get("run", 0)
        announced = with_tenant(_request_of(job, request, run), job["tenant"])
        if redrives > res.settings.max_redrives or job["source_key"] is None:
            log.error("job stalled; failing it", extra=extra)
            # The tracker may never have heard of the job (its request is what was lost): it
            # learns the job first, then its outputs' failures, in order on one partition.
            await res.emit(announced, key=job_id)
            for step in unresolved_outputs(spec, json.loads(job["steps"])):
                failed = StepFailed(
                    job_id=job_id,
                    step=step.id,
                    op=step.op,
                    code=STALLED,
                    message="the job made no progress while nothing for it waited; given up",
                    run=run,
                )
                await res.emit(make_event(STEP_FAILED, failed), key=job_id)
            return
        log.warning("job stalled; sending it through the pipeline again", extra=extra)
        await res.send(
            res.settings.topic(jobs_topic(request.priority)),  # in the job's lane
            announced.to_bytes(),
            key=job_id,
            headers=[(REDRIVE, str(redrives).encode())],
        )


def _request_of(job: Mapping[str, Any], request: JobRequested, run: int) -> CloudEvent:
    """What sends a stalled job through again: its request, or for a retried job its run's
    job.retried keeping the outputs recorded so far (none of them is rendered again)."""
    if run == 0:
        return make_event(JOB_REQUESTED, request)
    made = {
        sid: OUTPUT.validate_python(entry["output"])
        for sid, entry in json.loads(job["steps"]).items()
        if entry.get("status") == "completed" and entry.get("output")
    }
    retried = JobRetried(
        job_id=request.job_id,
        run=run,
        steps=request.steps,
        source_key=job["source_key"] or Plan.raw_key(request.job_id, "unknown"),
        outputs={sid: made[sid] for sid in kept_outputs(request.steps, made)},
        webhook_url=request.webhook_url,
        priority=request.priority,
    )
    return make_event(JOB_RETRIED, retried)


def group_topics(settings: Settings) -> list[str]:
    """Every topic the worker's group consumes, whatever `--ops` one process runs."""
    laned = [
        *lane_topics(settings, INTERACTIVE, OPERATIONS),
        *lane_topics(settings, BATCH, OPERATIONS),
    ]
    return [*laned, *(settings.topic(n) for n in ["events", *(t.name for t in TIERS)])]
