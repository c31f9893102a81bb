"""The planner, on `<prefix>.jobs` and `<prefix>.jobs.batch` (the batch lane's requests, in the
batch turn: `worker/lanes.py`): claim the job id for the request, validate it, make its
source an object in the bucket, announce the job on the events topic, and send its DAG to
the op topic of its first step as one task (docs/design.md says why one task carries the
whole DAG). A job whose every output is retained for its tenant (render once: the source's
sha256 is the checksum the endpoint kept) is answered here instead: its outputs copied and
its steps reported, no task.

The claim comes first: a request under the id of another job must not fail, announce or
overwrite that job, so it is dead-lettered (`job_id_conflict`) before anything can answer
for the id.

A retry (`pixstream.job.retried`, from `POST /v1/jobs/{id}/retry` through the outbox) is
planned the same way: announced on the events topic first, so the tracker has opened the new
run before any of its step results arrive (same key, same partition, in order), then one task
with only the steps the retry runs (`rerun.rerun_steps`)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import cast

from pixstream import errors, netguard, ownership
from pixstream.db import repository
from pixstream.events import (
    JOB_FAILED,
    JOB_REQUESTED,
    JOB_RETRIED,
    STEP_COMPLETED,
    TASK_REQUESTED,
    CloudEvent,
    ErrorInfo,
    JobFailed,
    JobRequested,
    JobRetried,
    MetadataOutput,
    OutputInfo,
    SourceKey,
    StepCompleted,
    TaskRequested,
    make_event,
)
from pixstream.plan import Plan
from pixstream.redelivery import REDRIVE
from pixstream.rerun import rerun_steps
from pixstream.spec import ID_PATTERN, JobSpec, parse_spec
from pixstream.topics import op_topic
from pixstream.worker import reuse
from pixstream.worker.handling import Message, Route
from pixstream.worker.resources import Resources
from pixstream.worker.source import fetch_source, source_key

log = logging.getLogger(__name__)


def route(res: Resources) -> Route:
    """The planner: job requests in, the job announced and its task sent."""

    async def handle(message: Message[JobRequested | JobRetried]) -> None:
        if isinstance(message.data, JobRetried):
            await plan_retry(res, cast(Message[JobRetried], message))
        else:
            await plan_job(res, cast(Message[JobRequested], message))

    async def refuse(
        message: Message[JobRequested | JobRetried], exc: errors.PermanentError
    ) -> None:
        data = message.data
        if isinstance(data, JobRetried):  # this run fails; what it kept stays listed
            await _fail(res, data.job_id, data.webhook_url, exc, run=data.run, kept=data.outputs)
        else:
            await _fail(res, data.job_id, data.webhook_url, exc)

    async def refuse_invalid(event: CloudEvent, exc: errors.InvalidEvent) -> bool:
        job_id = _job_id_of(event)
        if job_id is None:  # nobody can be told: keep the message for a human
            return False
        if await _exists(res, job_id):  # not this request's job to fail
            return False
        await _fail(res, job_id, _webhook_of(event), exc)
        return True

    return Route("planner", frozenset({JOB_REQUESTED, JOB_RETRIED}), handle, refuse, refuse_invalid)


async def _fail(
    res: Resources,
    job_id: str,
    webhook_url: str | None,
    exc: errors.PermanentError,
    *,
    run: int = 0,
    kept: dict[str, OutputInfo | MetadataOutput] | None = None,
) -> None:
    log.info("job refused: %s", exc.message, extra={"job_id": job_id, "code": exc.code})
    failed = JobFailed(
        job_id=job_id,
        errors=[ErrorInfo(step=None, code=exc.code, message=exc.message)],
        outputs=kept or {},
        webhook_url=webhook_url,
        run=run,
    )
    await res.emit(make_event(JOB_FAILED, failed), key=job_id)


async def plan_job(res: Resources, message: Message[JobRequested]) -> None:
    """Validate one job request, make its source an object in the bucket, announce the job
    and send its DAG as one task to the op topic of its first step."""
    request, event = message.data, message.event
    tenant = ownership.tenant_of(event)
    # Round trips at once (gather, not a task group: an error must reach the entry point as
    # itself, to be classified, not wrapped in an ExceptionGroup): the job id's claim and the
    # source's sha256 (render once); then the announcement and the index lookup.
    digest, _ = await asyncio.gather(
        _kept_sha256(res, request, tenant), _claim_job_id(res, message, tenant)
    )
    spec = _validated_spec(res, request)
    key = await _source_object(res, request)
    accepted = request.model_copy(update={"steps": spec.steps, "source": SourceKey(key=key)})
    announced = ownership.with_tenant(
        make_event(JOB_REQUESTED, accepted, source=event.source), tenant
    )
    plan = Plan.from_spec(spec)
    _, outputs = await asyncio.gather(
        res.emit(announced, key=request.job_id),
        _retained(res, request.job_id, tenant, plan, digest),
    )
    if outputs is not None:
        await _report_reused(res, request.job_id, plan, outputs)
        return
    first_op = plan.steps[plan.order[0]].spec.op
    task = TaskRequested(
        job_id=request.job_id,
        source_key=key,
        steps=spec.steps,
        tenant=tenant,
        source_sha256=digest,
    )
    await res.send(
        res.settings.topic(op_topic(first_op, spec.priority)),
        make_event(TASK_REQUESTED, task).to_bytes(),
        key=request.job_id,
    )
    log.info(
        "job planned", extra={"job_id": request.job_id, "op": first_op, "steps": len(spec.steps)}
    )


async def _kept_sha256(res: Resources, request: JobRequested, tenant: str) -> str | None:
    """The sha256 the endpoint kept for a `source.key` object this job may read, when its
    tenant's outputs are reused (a HEAD); None otherwise."""
    source = request.source
    if not isinstance(source, SourceKey) or not reuse.applies(res, tenant):
        return None
    if not _readable(res, source.key):
        return None  # refused below, and not to be looked at first
    return await reuse.source_sha256(res, source.key)


async def _retained(
    res: Resources, job_id: str, tenant: str, plan: Plan, digest: str | None
) -> dict[str, OutputInfo | MetadataOutput] | None:
    return None if digest is None else await reuse.retained(res, job_id, tenant, plan, digest)


async def _report_reused(
    res: Resources, job_id: str, plan: Plan, outputs: dict[str, OutputInfo | MetadataOutput]
) -> None:
    """Every step completed, its output copied: the ids are the ones an op agent would give
    them, so a task of this job sent by an earlier delivery reports nothing new."""
    await asyncio.gather(
        *(
            res.emit(
                make_event(
                    STEP_COMPLETED,
                    StepCompleted(
                        job_id=job_id,
                        step=sid,
                        op=plan.steps[sid].spec.op,
                        output=outputs.get(sid),
                    ),
                ),
                key=job_id,
            )
            for sid in plan.order
        )
    )
    log.info("job answered from the render-once index", extra={"job_id": job_id})


async def plan_retry(res: Resources, message: Message[JobRetried]) -> None:
    """Announce a retry's run and send one task with the steps it re-runs. The ingress checked
    the job and its source when it accepted the retry; the source may have gone since."""
    retried, event = message.data, message.event
    steps = rerun_steps(retried.steps, retried.outputs)
    _check_readable(res, retried.source_key)
    if steps and not await res.storage.exists(retried.source_key):
        raise errors.SourceUnavailable(
            f"source object {retried.source_key} no longer exists (past retention?)"
        )
    announced = ownership.with_tenant(
        make_event(JOB_RETRIED, retried, source=event.source), ownership.tenant_of(event)
    )
    await res.emit(announced, key=retried.job_id)
    if not steps:
        # Every output is made (a re-drive of a run whose end was lost): the tracker ends the
        # run, or says its end again, from the announcement alone.
        return
    plan = Plan.from_spec(JobSpec(steps=steps))
    first_op = plan.steps[plan.order[0]].spec.op
    task = TaskRequested(
        job_id=retried.job_id,
        source_key=retried.source_key,
        steps=steps,
        tenant=ownership.tenant_of(event),
        run=retried.run,
    )
    await res.send(
        res.settings.topic(op_topic(first_op, retried.priority)),
        make_event(TASK_REQUESTED, task).to_bytes(),
        key=retried.job_id,
    )
    log.info(
        "retry planned",
        extra={"job_id": retried.job_id, "run": retried.run, "op": first_op, "steps": len(steps)},
    )


async def _claim_job_id(res: Resources, message: Message[JobRequested], tenant: str) -> None:
    """The job id is this request's from now on, or JobIdConflict. A re-drive (the
    reconciler's, of a job it found in PostgreSQL) holds it already."""
    if message.record.header(REDRIVE) is not None:
        return
    request = message.data
    row = repository.NewJob.requested(request, tenant, ownership.request_digest(message.event))

    async def claim(conn: object) -> bool:
        return await repository.claim_job_id(conn, row, message.event.time)

    ours = await res.write_db(claim, what="claiming the job id", job_id=request.job_id)
    if not ours:
        raise errors.JobIdConflict(
            f"job_id_conflict: job {request.job_id} exists for another request; this one "
            f"(event {message.event.id}) was not run and the job was left as it is"
        )


async def _exists(res: Resources, job_id: str) -> bool:
    async def read(conn: object) -> bool:
        return await repository.get_job(conn, job_id) is not None

    return await res.write_db(read, what="looking up the job id", job_id=job_id)


def _validated_spec(res: Resources, request: JobRequested) -> JobSpec:
    spec = parse_spec(
        {
            "steps": [s.model_dump() for s in request.steps],
            "webhook_url": request.webhook_url,
            "priority": request.priority,
        },
        presets={},
        max_steps=res.settings.max_steps,
    )
    if spec.webhook_url:
        netguard.check_url(spec.webhook_url, allow_private=res.settings.webhook_allow_private)
    return spec


async def _source_object(res: Resources, request: JobRequested) -> str:
    """The key of the job's source in the bucket, fetching a `source.url` first."""
    if isinstance(request.source, SourceKey):
        _check_readable(res, request.source.key)
        # Not looked up here: the op agent's GET answers a missing object with
        # source_unavailable just the same, and a HEAD per job was one S3 request in five.
        return request.source.key
    url = str(request.source.url)
    data, fmt = await fetch_source(
        res.http,
        url,
        max_bytes=res.settings.max_upload_bytes,
        allow_private=res.settings.source_allow_private,
    )
    key = source_key(request.job_id, fmt)
    await res.storage.put(key, data, f"image/{fmt}")

    async def record_key(conn: object) -> None:  # what a re-drive reads the source from
        await repository.set_source_key(conn, request.job_id, key)

    await res.write_db(record_key, what="recording the source key", job_id=request.job_id)
    return key


def _check_readable(res: Resources, key: str) -> None:
    """SourceForbidden unless jobs may read `key` (a retry is held to it too: a job refused
    its source must not read it when retried)."""
    if not _readable(res, key):
        prefixes = res.settings.source_key_prefixes
        raise errors.SourceForbidden(
            f"source.key {key!r} is outside the keys jobs may read "
            f"(they start with {', '.join(repr(p) for p in prefixes)})"
        )


def _readable(res: Resources, key: str) -> bool:
    return key.startswith(tuple(res.settings.source_key_prefixes))


def _job_id_of(event: CloudEvent) -> str | None:
    job_id = event.data.get("job_id")
    return job_id if isinstance(job_id, str) and re.fullmatch(ID_PATTERN, job_id) else None


def _webhook_of(event: CloudEvent) -> str | None:
    url = event.data.get("webhook_url")
    return url if isinstance(url, str) else None
