"""The HTTP handlers and the routing table of the ingress.

POST /v1/jobs is the only write: validate everything first, store the upload in S3 (under a
key of its own, so a retry overwrites nothing), then one short PostgreSQL transaction claims
the idempotency key, inserts the row and queues job.requested in the outbox; the relay
publishes it (`relay.py`). The 202 follows the commit, so it and the event are one fact: no
503 hides a job that runs, and no connection is held across S3 or Kafka. POST
/v1/jobs/{id}/retry is built the same way: checks first, then one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pixstream import netguard
from pixstream.db import job_events, outbox, repository
from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.events import (
    JOB_REQUESTED,
    JOB_RETRIED,
    JobRequested,
    JobRetried,
    MetadataOutput,
    SourceKey,
    make_event,
)
from pixstream.ingress import openapi
from pixstream.ingress.admission import check_upload
from pixstream.ingress.auth import Caller, Unauthorized, caller, check_spec_allowed
from pixstream.ingress.cursor import Cursor
from pixstream.ingress.keys import HEALTH, LIMITER, POOL, RELAY, SETTINGS, STORAGE
from pixstream.ingress.models import (
    ErrorView,
    JobAccepted,
    JobLinks,
    JobList,
    JobView,
    MetadataView,
    OperationInfo,
    OperationList,
    OutputView,
    PresetInfo,
    PresetList,
    Progress,
    RetryAccepted,
    WebhookView,
)
from pixstream.ingress.problems import BadRequest, NotFound, RateLimited, SourceExpired
from pixstream.ingress.upload import Upload, read_upload
from pixstream.metrics import UPLOAD_BYTES
from pixstream.ops import catalogue
from pixstream.ownership import request_digest, with_tenant
from pixstream.plan import Plan
from pixstream.rerun import kept_outputs, rerun_steps
from pixstream.spec import ID_PATTERN, INTERACTIVE, JobSpec, StepSpec, parse_spec
from pixstream.topics import jobs_topic

log = logging.getLogger(__name__)

STATIC: Final = Path(str(resources.files("pixstream.ingress") / "static"))
STATIC_FILES: Final = frozenset({"index.html", "app.js", "thumbhash.js"})
#: Seconds to wait for a PostgreSQL connection from the pool before answering 503.
DB_ACQUIRE_TIMEOUT: Final = 5.0
LIST_LIMIT_DEFAULT: Final = 50
LIST_LIMIT_MAX: Final = 200
_IDEMPOTENCY_KEY: Final = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, like a token
_JOB_ID: Final = re.compile(ID_PATTERN)


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=model.model_dump_json(by_alias=True),
        content_type="application/json",
        headers=headers,
    )


# -- POST /v1/jobs ------------------------------------------------------------------------------
async def post_job(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    who = caller(request)
    wait = app[LIMITER].acquire(who.rate_key)
    if wait:
        per = "client address" if who.anonymous else f"API key ({who.key_id})"
        raise RateLimited(
            f"more than {settings.rate_limit_per_minute} jobs per minute for this {per}",
            retry_after=wait,
        )
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
    upload = await read_upload(request, max_bytes=settings.max_upload_bytes)
    check_spec_allowed(who, upload.spec, settings.anonymous)
    spec = parse_spec(upload.spec, presets=settings.presets, max_steps=settings.max_steps)
    if spec.webhook_url is not None:
        netguard.check_url(spec.webhook_url, allow_private=settings.webhook_allow_private)
    await asyncio.to_thread(  # headers and planned sizes only, but a big GIF takes a while
        check_upload,
        upload.data,
        spec,
        max_pixels=settings.max_pixels,
        max_frames=settings.max_frames,
    )

    job_id = await _accept(app, who, upload, spec, idempotency_key)
    location = f"/v1/jobs/{job_id}"
    body = JobAccepted(job_id=job_id, links=JobLinks(self_=location))
    return _json(body, 202, headers={"Location": location})


def spec_json(spec: JobSpec) -> str:
    """The canonical JSON of a parsed spec: the stored form, and half of the request hash."""
    return json.dumps(
        spec.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )


def request_hash(data: bytes, canonical_spec: str) -> str:
    """What makes two submissions the same request: the file's bytes and the parsed spec."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(data).digest())
    digest.update(canonical_spec.encode())
    return digest.hexdigest()


async def _accept(
    app: web.Application, who: Caller, upload: Upload, spec: JobSpec, idempotency_key: str | None
) -> str:
    """Store the upload, then record the job and queue its event in one transaction; the id
    of the job (an earlier one when the Idempotency-Key names it)."""
    job_id = uuid.uuid4().hex
    key = Plan.raw_key(job_id, upload.format)
    canonical = spec_json(spec)
    event = with_tenant(
        make_event(
            JOB_REQUESTED,
            JobRequested(
                job_id=job_id,
                steps=list(spec.steps),
                webhook_url=spec.webhook_url,
                source=SourceKey(key=key),
                priority=spec.priority,
            ),
        ),
        who.tenant,
    )
    digest = None
    if idempotency_key is not None:
        digest = await asyncio.to_thread(request_hash, upload.data, canonical)
        async with translated(), app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
            earlier = await repository.idempotent_job(conn, who.tenant, idempotency_key, digest)
        if earlier is not None:  # a retry: nothing to store again
            return earlier
    # Before the transaction, so no connection waits on S3. Should the transaction then fail,
    # the object is an orphan that the bucket's expiry removes.
    await app[STORAGE].put(key, upload.data, upload.content_type)
    async with (
        translated(),
        app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn,
        conn.transaction(),
    ):
        if idempotency_key is not None and digest is not None:
            claimed, created = await repository.claim_idempotency_key(
                conn, who.tenant, idempotency_key, digest, job_id
            )
            if not created:  # a concurrent duplicate committed first
                return claimed
        row = repository.NewJob(
            job_id=job_id,
            spec_json=canonical,
            steps_total=len(spec.steps),
            source_key=key,
            webhook_url=spec.webhook_url,
            tenant=who.tenant,
            request_hash=request_digest(event),
        )
        await repository.create_job(conn, row)
        # A batch job's request takes the batch lane's jobs topic, so an interactive one
        # posted behind a burst of them is not planned after the whole burst.
        topic = app[SETTINGS].topic(jobs_topic(spec.priority))
        message = await outbox.add(conn, topic, job_id, event.to_bytes())
    app[RELAY].hand(message)
    UPLOAD_BYTES.observe(len(upload.data))
    log.info(
        "job accepted",
        extra={"job_id": job_id, "format": upload.format, "tenant": who.tenant},
    )
    return job_id


# -- POST /v1/jobs/{job_id}/retry ---------------------------------------------------------------
async def retry_job(request: web.Request) -> web.Response:
    """Run a failed job's failed outputs again (with the steps on their paths, `rerun.py`)
    from its retained source, keeping the outputs that succeeded as they are. One transaction
    opens the new run on the record, logs its job.retried for the event stream and queues the
    same event in the outbox; the planner plans it from Kafka."""
    app = request.app
    settings = app[SETTINGS]
    job = await find_job(request)  # 404 exactly as GET /v1/jobs/{id}: tenants stay apart
    who = caller(request)
    if wait := app[LIMITER].acquire(who.rate_key):  # a retry renders like a new job
        raise RateLimited("too many jobs and retries per minute for this caller", retry_after=wait)
    if job.status != repository.FAILED:
        raise repository.NotRetryable(
            f"job {job.job_id} is {job.status}: only a failed job can be retried"
        )
    source_key = await _retained_source(app, job, datetime.now(UTC))
    steps = [StepSpec.model_validate(s) for s in job.spec.get("steps", [])]
    made = job.outputs
    kept = {sid: made[sid] for sid in kept_outputs(steps, made)}
    rerun = rerun_steps(steps, kept) if steps else []
    if not rerun:  # a job failed with every output made: nothing to run again
        raise repository.NotRetryable(f"job {job.job_id} has no failed output to run again")
    run = job.run + 1
    retried = JobRetried(
        job_id=job.job_id,
        run=run,
        steps=steps,
        source_key=source_key,
        outputs=kept,
        webhook_url=job.webhook_url,
        priority=job.spec.get("priority", INTERACTIVE),
    )
    event = with_tenant(make_event(JOB_RETRIED, retried), job.tenant)
    async with (
        translated(),
        app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn,
        conn.transaction(),
    ):
        # Raises NotRetryable when another retry (or anything else) moved the job since the
        # read above: the row is locked here, so two retries cannot both open run `run`.
        rerun_ids = {s.id for s in rerun}
        await repository.open_run(conn, job.job_id, run, rerun_ids, event.time, retry=True)
        await job_events.append(conn, job.job_id, event)
        topic = settings.topic(jobs_topic(retried.priority))  # in the job's lane
        message = await outbox.add(conn, topic, job.job_id, event.to_bytes())
    app[RELAY].hand(message)
    log.info(
        "job retried",
        extra={"job_id": job.job_id, "run": run, "steps": len(rerun), "tenant": job.tenant},
    )
    location = f"/v1/jobs/{job.job_id}"
    body = RetryAccepted(job_id=job.job_id, run=run, links=JobLinks(self_=location))
    return _json(body, 202, headers={"Location": location})


async def _retained_source(app: web.Application, job: repository.JobRecord, now: datetime) -> str:
    """The job's source key while its object is retained, else SourceExpired."""
    expires_at = job.created_at + timedelta(seconds=app[SETTINGS].retention_seconds)
    if job.source_key is None:  # it failed before its source was ever stored
        raise SourceExpired(f"job {job.job_id} has no stored source to run again from")
    if now >= expires_at:
        raise SourceExpired(
            f"job {job.job_id} expired at {expires_at.isoformat()}: its source is not retained"
        )
    if not await app[STORAGE].exists(job.source_key):
        raise SourceExpired(f"the source of job {job.job_id} is no longer stored")
    return job.source_key


# -- GET /v1/jobs/{job_id} ----------------------------------------------------------------------
async def get_job(request: web.Request) -> web.Response:
    app = request.app
    job = await find_job(request)
    async with translated(), app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        hook = await repository.webhook_status(conn, job.job_id)
    view = job_view(job, hook, app, now=datetime.now(UTC))
    return _json(view, headers={"Cache-Control": "no-cache"})


async def find_job(request: web.Request) -> repository.JobRecord:
    """The job of the route's `{job_id}` as this caller may see it, else NotFound: the one
    lookup of GET /v1/jobs/{id} and of its /events, so both answer alike."""
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r} (job ids are 1-64 letters, digits, '-' or '_')")
    async with translated(), request.app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        job = await repository.get_job(conn, job_id)
    if job is None or not caller(request).may_read(job.tenant):
        raise NotFound(f"no job {job_id!r}")
    return job


# -- GET /v1/jobs -------------------------------------------------------------------------------
async def list_jobs(request: web.Request) -> web.Response:
    who = caller(request)
    if who.anonymous:
        raise Unauthorized(
            "listing jobs needs an API key (jobs without one are readable by their id only)"
        )
    query = request.query
    try:
        limit = int(query.get("limit", LIST_LIMIT_DEFAULT))
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {query['limit']!r}") from None
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise BadRequest(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
    status = query.get("status")
    if status is not None and status not in repository.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(repository.STATUSES)}, got {status!r}")
    after = Cursor.parse(query["cursor"]) if "cursor" in query else None
    async with translated(), request.app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        jobs = await repository.list_jobs(
            conn,
            who.tenant,
            limit=limit + 1,  # one more than asked: whether there is a next page
            status=status,
            after=after.position if after is not None else None,
        )
    now = datetime.now(UTC)
    page = jobs[:limit]
    more = len(jobs) > limit
    body = JobList(
        jobs=[job_view(job, None, request.app, now=now) for job in page],
        next_cursor=Cursor.of(page[-1].created_at, page[-1].job_id).text if more else None,
    )
    return _json(body, headers={"Cache-Control": "no-cache"})


def job_view(
    job: repository.JobRecord,
    hook: repository.WebhookStatus | None,
    app: web.Application,
    *,
    now: datetime,
) -> JobView:
    settings = app[SETTINGS]
    storage = app[STORAGE]
    expires_at = job.created_at + timedelta(seconds=settings.retention_seconds)
    expired = now >= expires_at
    outputs: dict[str, OutputView | MetadataView] = {}
    for step, out in job.outputs.items():
        if isinstance(out, MetadataOutput):  # a report: no object, so no URL
            outputs[step] = MetadataView(data=out.data, reused_from=out.reused_from)
            continue
        outputs[step] = OutputView(
            # No dead links: past retention the objects are gone, so no URL is offered.
            url=None if expired else storage.presigned_url(out.key, now=now.timestamp()),
            key=out.key,
            format=out.format,
            width=out.width,
            height=out.height,
            bytes=out.bytes,
            reused_from=out.reused_from,
        )
    return JobView(
        job_id=job.job_id,
        status=job.status,
        run=job.run,
        created_at=job.created_at,
        updated_at=job.updated_at,
        expires_at=expires_at,
        expired=expired,
        progress=Progress(steps_total=job.steps_total, steps_done=job.steps_done),
        outputs=outputs,
        errors=[ErrorView.model_validate(e) for e in job.errors()],
        webhook=WebhookView.model_validate(hook.as_dict()) if hook is not None else None,
    )


# -- catalogue, presets, documents --------------------------------------------------------------
async def get_operations(request: web.Request) -> web.Response:
    ops = OperationList(operations=[OperationInfo.model_validate(op) for op in catalogue()])
    return _json(ops)


async def get_presets(request: web.Request) -> web.Response:
    presets = request.app[SETTINGS].presets
    body = PresetList(
        presets=[PresetInfo(name=name, steps=list(p["steps"])) for name, p in presets.items()]
    )
    return _json(body)


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def get_health(request: web.Request) -> web.Response:
    report = await request.app[HEALTH].report()
    return web.json_response(report.as_dict(), status=200 if report.ok else 503)


async def get_metrics(request: web.Request) -> web.Response:
    try:
        await request.app[HEALTH].refresh_job_counts()
    except DatabaseUnavailable as exc:
        # The process metrics are still worth scraping; the job gauge keeps its last value.
        log.warning("metrics: jobs by status unavailable: %s", exc)
    resp = web.Response(body=generate_latest())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def get_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def get_static(request: web.Request) -> web.FileResponse:
    # An explicit list rather than a directory route: nothing else can be served from here,
    # and a missing asset is a problem+json 404 like every other one.
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFound(f"no static asset {name!r}")
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.post("/v1/jobs", post_job, name="post_job"),
            web.get("/v1/jobs", list_jobs, name="list_jobs"),
            web.get("/v1/jobs/{job_id}", get_job, name="get_job"),
            web.post("/v1/jobs/{job_id}/retry", retry_job, name="retry_job"),
            web.get("/v1/operations", get_operations, name="operations"),
            web.get("/v1/presets", get_presets, name="presets"),
            web.get("/openapi.json", get_openapi, name="openapi"),
            web.get("/health", get_health, name="health"),
            web.get("/metrics", get_metrics, name="metrics"),
            web.get("/", get_index, name="index"),
            web.get("/static/{name}", get_static, name="static"),
        ]
    )
