"""The job records in PostgreSQL: what the ingress writes, what the API reads, and the
projection of the lifecycle events (`apply_event`) the recorder agent runs.

Every write is an idempotent upsert, so replaying or reordering events never changes the
result. JSON goes in as text (`$n::text::jsonb`) and comes out as text (`col::text`), so these
functions work on any asyncpg connection whatever jsonb codec its pool has installed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import asyncpg

from pixstream import errors, ownership
from pixstream.events import (
    LIFECYCLE_TYPES,
    OUTPUT,
    CloudEvent,
    Data,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobRetried,
    MetadataOutput,
    OutputInfo,
    SourceKey,
    StepCompleted,
    StepFailed,
    TaskStarted,
    parse_data,
)
from pixstream.rerun import rerun_steps
from pixstream.spec import INTERACTIVE

QUEUED: Final = "queued"
PROCESSING: Final = "processing"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
STATUSES: Final = (QUEUED, PROCESSING, COMPLETED, FAILED)
TERMINAL: Final = frozenset({COMPLETED, FAILED})
_RANK: Final = {QUEUED: 0, PROCESSING: 1, COMPLETED: 2, FAILED: 2}

#: An Idempotency-Key names its job for this long; after that the key may be reused.
IDEMPOTENCY_TTL_SECONDS: Final = 24 * 3600


class NotRetryable(errors.PermanentError):
    """Only a failed job can be retried, once per failure."""

    code = "job_not_retryable"


class IdempotencyKeyReused(errors.PermanentError):
    """The Idempotency-Key was already used for a different request."""

    code = "idempotency_key_reused"


# -- SQL ----------------------------------------------------------------------------------------
INSERT_JOB: Final = """
INSERT INTO jobs (job_id, status, steps_total, spec, source_key, webhook_url, tenant,
                  request_hash)
VALUES ($1, 'queued', $2, $3::text::jsonb, $4, $5, $6, $7)
"""

# The planner's claim of a job id for the request it is about to run, in one round trip: a
# new row, or the details of a placeholder an overtaking event made; either way the row's
# digest of the request that owns the id comes back (NULL only for rows from before digests
# were kept). A row that is a real job already is updated to itself, so that it is locked
# and returned even when a concurrent claim committed it after this statement began.
_FREE: Final = "jobs.steps_total = 0 AND jobs.request_hash IS NULL"
CLAIM_JOB_ID: Final = f"""
INSERT INTO jobs (job_id, status, steps_total, spec, source_key, webhook_url, tenant,
                  request_hash, created_at, updated_at)
VALUES ($1, 'queued', $2, $3::text::jsonb, $4, $5, $6, $7, $8, $8)
ON CONFLICT (job_id) DO UPDATE
    SET steps_total = CASE WHEN {_FREE} THEN EXCLUDED.steps_total ELSE jobs.steps_total END,
        spec = CASE WHEN {_FREE} THEN EXCLUDED.spec ELSE jobs.spec END,
        source_key = CASE WHEN {_FREE} THEN EXCLUDED.source_key ELSE jobs.source_key END,
        webhook_url = CASE WHEN {_FREE} THEN EXCLUDED.webhook_url ELSE jobs.webhook_url END,
        tenant = CASE WHEN {_FREE} THEN EXCLUDED.tenant ELSE jobs.tenant END,
        created_at = CASE WHEN {_FREE} THEN LEAST(jobs.created_at, EXCLUDED.created_at)
                          ELSE jobs.created_at END,
        request_hash = CASE WHEN {_FREE} THEN EXCLUDED.request_hash ELSE jobs.request_hash END
RETURNING request_hash
"""

# A key older than the TTL is taken over by the new request, as if it had never been used.
# A concurrent claim of the same key waits here on the unique index until the first
# transaction commits (then it sees the row) or rolls back (then it inserts its own).
CLAIM_IDEMPOTENCY_KEY: Final = """
INSERT INTO idempotency_keys (tenant, key, request_hash, job_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, created_at = now()
    WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)
RETURNING job_id
"""

SELECT_IDEMPOTENCY_KEY: Final = """
SELECT job_id, request_hash FROM idempotency_keys WHERE tenant = $1 AND key = $2
"""

_JOB_COLUMNS: Final = """
job_id, status, steps_total, spec::text AS spec, source_key, webhook_url, steps::text AS steps,
job_error::text AS job_error, created_at, updated_at, finished_at, tenant, run
"""

SELECT_JOB: Final = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = $1"
SELECT_JOB_FOR_UPDATE: Final = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = $1 FOR UPDATE"

# Newest first; the cursor is the (created_at, job_id) of the last job of the previous page.
LIST_JOBS: Final = f"""
SELECT {_JOB_COLUMNS} FROM jobs
WHERE tenant = $1
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, job_id) < ($3, $4))
ORDER BY created_at DESC, job_id DESC
LIMIT $5
"""

# The recorder's projection (`apply_events`): the rows its events would make, as placeholders
# (steps_total = 0) that `fold` fills in; every row locked in one order; then what changed.
INSERT_PLACEHOLDERS: Final = """
INSERT INTO jobs (job_id, status, steps_total, spec, created_at, updated_at)
SELECT t.job_id, 'queued', 0, '{}'::jsonb, t.at, t.at
FROM unnest($1::text[], $2::timestamptz[]) AS t(job_id, at)
ORDER BY t.job_id
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""

LOCK_JOBS: Final = f"""
SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE
"""

# Every column an event may change, from the row `fold` made of the row locked above.
UPDATE_JOBS: Final = """
UPDATE jobs
SET status = u.status, steps_total = u.steps_total, spec = u.spec::jsonb,
    source_key = u.source_key, webhook_url = u.webhook_url, tenant = u.tenant,
    steps = u.steps::jsonb, job_error = u.job_error::jsonb, created_at = u.created_at,
    updated_at = u.updated_at, finished_at = u.finished_at, run = u.run
FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::integer[])
    AS u(job_id, status, steps_total, spec, source_key, webhook_url, tenant, steps, job_error,
         created_at, updated_at, finished_at, run)
WHERE jobs.job_id = u.job_id
"""

SELECT_WEBHOOK_STATUS: Final = """
SELECT state, attempts, last_status, last_error, delivered_at, next_attempt_at
FROM webhook_deliveries WHERE job_id = $1
ORDER BY created_at DESC, event_id DESC LIMIT 1
"""

COUNT_JOBS_BY_STATUS: Final = "SELECT status, count(*) AS n FROM jobs GROUP BY status"


# -- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRecord:
    """A row of `jobs`, with its JSON columns decoded."""

    job_id: str
    status: str
    steps_total: int
    spec: dict[str, Any]
    source_key: str | None
    webhook_url: str | None
    steps: dict[str, dict[str, Any]]
    job_error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    tenant: str = "anonymous"
    run: int = 0  # 0, or the number of the latest retry

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        return cls(
            job_id=row["job_id"],
            status=row["status"],
            steps_total=row["steps_total"],
            spec=json.loads(row["spec"]),
            source_key=row["source_key"],
            webhook_url=row["webhook_url"],
            steps=json.loads(row["steps"]),
            job_error=json.loads(row["job_error"]) if row["job_error"] is not None else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            tenant=row["tenant"],
            run=row["run"],
        )

    @property
    def steps_done(self) -> int:
        """Steps with a result (completed, or failed including skipped after a failed input)."""
        return len(self.steps)

    @property
    def outputs(self) -> dict[str, OutputInfo | MetadataOutput]:
        """The outputs made so far, in spec order where the spec knows the step."""
        made = {
            sid: OUTPUT.validate_python(entry["output"])
            for sid, entry in self.steps.items()
            if entry.get("status") == COMPLETED and entry.get("output")
        }
        order = [s["id"] for s in self.spec.get("steps", []) if s.get("id") in made]
        return {sid: made[sid] for sid in [*order, *sorted(set(made) - set(order))]}

    def errors(self) -> list[dict[str, Any]]:
        """The job-level error first, then each failed step's, in spec order."""
        found: list[dict[str, Any]] = []
        if self.job_error is not None:
            found.append({"step": None, **self.job_error})
        order = [s["id"] for s in self.spec.get("steps", [])]
        failed = [sid for sid, e in self.steps.items() if e.get("status") == FAILED]
        for sid in sorted(failed, key=lambda s: order.index(s) if s in order else len(order)):
            entry = self.steps[sid]
            found.append({"step": sid, "code": entry.get("code"), "message": entry.get("message")})
        return found


@dataclass(frozen=True)
class WebhookStatus:
    """The delivery of a job's terminal event to its webhook_url."""

    state: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "next_attempt_at": (
                self.next_attempt_at.isoformat()
                if self.next_attempt_at and self.state == "pending"
                else None
            ),
        }


# -- pool ---------------------------------------------------------------------------------------
async def release_reset(conn: Any) -> None:
    """What a pooled connection needs before its next user: only an unfinished transaction
    rolled back. asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is
    a round trip on every release, about 20 per job; PixStream's pooled connections never
    LISTEN, SET or hold session locks or cursors (the one LISTEN has its own connection)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


@asynccontextmanager
async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> AsyncIterator[Any]:
    """An asyncpg pool, closed on exit; `command_timeout` bounds every statement."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10, reset=release_reset
    )
    try:
        yield pool
    finally:
        await pool.close()


# -- the ingress's writes ---------------------------------------------------------------------
@dataclass(frozen=True)
class NewJob:
    """A queued job's row as its request makes it: what the ingress inserts and the planner
    claims the id with. `request_hash` is `ownership.request_digest` of its job.requested."""

    job_id: str
    spec_json: str
    steps_total: int
    source_key: str | None
    webhook_url: str | None
    tenant: str
    request_hash: str

    @classmethod
    def requested(cls, data: JobRequested, tenant: str, request_hash: str) -> NewJob:
        """The row of a job.requested that reaches the planner (the worker's stored spec is
        its steps and webhook_url, as the recorder writes it)."""
        return cls(
            job_id=data.job_id,
            spec_json=_requested_spec(data),
            steps_total=len(data.steps),
            source_key=data.source.key if isinstance(data.source, SourceKey) else None,
            webhook_url=data.webhook_url,
            tenant=tenant,
            request_hash=request_hash,
        )

    def params(self) -> tuple[Any, ...]:
        """The row's values, in the order INSERT_JOB and CLAIM_JOB_ID take them ($1 to $7)."""
        return (
            self.job_id,
            self.steps_total,
            self.spec_json,
            self.source_key,
            self.webhook_url,
            self.tenant,
            self.request_hash,
        )


async def create_job(conn: Any, job: NewJob) -> None:
    """Insert a queued job; the planner's and the recorder's later job.requested for it then
    change nothing."""
    await conn.execute(INSERT_JOB, *job.params())


async def claim_job_id(conn: Any, job: NewJob, time: datetime) -> bool:
    """Make the job's row for the request `job.request_hash` unless it exists: True when the
    id is this request's (new, or the same request again), False when another request holds
    it."""
    owner = await conn.fetchval(CLAIM_JOB_ID, *job.params(), time)
    return owner is None or owner == job.request_hash


async def set_source_key(conn: Any, job_id: str, key: str) -> None:
    """Record where a fetched source was stored (a job from a `source.url` had no key)."""
    await conn.execute(
        "UPDATE jobs SET source_key = $2 WHERE job_id = $1 AND source_key IS NULL", job_id, key
    )


async def open_run(
    conn: Any, job_id: str, run: int, rerun: Collection[str], time: datetime, *, retry: bool
) -> bool:
    """Make `run` the job's current run: `processing` again, without the results of the
    steps in `rerun` nor a job-level error; False when the job is at `run` or later already.

    `retry`: the ingress accepting a retry, for which the job must be failed at run `run - 1`
    (NotRetryable otherwise, e.g. a concurrent retry committed first). The recorder's
    projection of the run's job.retried (`fold`) opens it the same way, when the ingress has
    not already.
    """
    async with conn.transaction():
        row = await conn.fetchrow(SELECT_JOB_FOR_UPDATE, job_id)
        job = JobRecord.from_row(row) if row is not None else None
        if retry and (job is None or job.status != FAILED or job.run != run - 1):
            state = "unknown" if job is None else f"{job.status} (run {job.run})"
            raise NotRetryable(f"job {job_id} is {state}: only a failed job can be retried")
        if job is None or job.run >= run:
            return False
        await conn.execute(UPDATE_JOBS, *_columns([reopened(job, run, rerun, time)]))
    return True


async def idempotent_job(conn: Any, tenant: str, key: str, request_hash: str) -> str | None:
    """The live job the tenant's `key` names for this same request, or None when the key is
    free (or expired); IdempotencyKeyReused when it names another request."""
    row = await conn.fetchrow(
        SELECT_IDEMPOTENCY_KEY + " AND created_at >= now() - make_interval(secs => $3)",
        tenant,
        key,
        float(IDEMPOTENCY_TTL_SECONDS),
    )
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise _reused(key)
    return str(row["job_id"])


def _reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was used within the last 24 h for a different request; "
        "use a new key for a new request"
    )


async def claim_idempotency_key(
    conn: Any, tenant: str, key: str, request_hash: str, job_id: str
) -> tuple[str, bool]:
    """Bind the tenant's `key` to `job_id`, or return the job it already names:
    (job_id, created).

    Run it inside the transaction that creates the job, so a concurrent duplicate blocks on the
    key until that transaction ends. IdempotencyKeyReused when the key names another request
    (without naming the job: the key may be a guess).
    """
    claimed = await conn.fetchval(CLAIM_IDEMPOTENCY_KEY, tenant, key, request_hash, job_id,
                                  float(IDEMPOTENCY_TTL_SECONDS))  # fmt: skip
    if claimed is not None:
        return str(claimed), True
    row = await conn.fetchrow(SELECT_IDEMPOTENCY_KEY, tenant, key)
    if row is None:  # cannot happen inside one transaction; a clear error if it ever does
        raise errors.TransientError(f"Idempotency-Key {key!r} vanished while being claimed")
    if row["request_hash"] != request_hash:
        raise _reused(key)
    return str(row["job_id"]), False


# -- reads --------------------------------------------------------------------------------------
async def get_job(conn: Any, job_id: str) -> JobRecord | None:
    row = await conn.fetchrow(SELECT_JOB, job_id)
    return JobRecord.from_row(row) if row is not None else None


async def list_jobs(
    conn: Any,
    tenant: str,
    *,
    limit: int,
    status: str | None = None,
    after: tuple[datetime, str] | None = None,
) -> list[JobRecord]:
    """The tenant's jobs newest first, from just past `after` (created_at, job_id)."""
    since, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(LIST_JOBS, tenant, status, since, last_id, limit)
    return [JobRecord.from_row(row) for row in rows]


async def webhook_status(conn: Any, job_id: str) -> WebhookStatus | None:
    """The latest webhook delivery of the job, or None when it has none (yet)."""
    row = await conn.fetchrow(SELECT_WEBHOOK_STATUS, job_id)
    if row is None:
        return None
    return WebhookStatus(
        state=row["state"],
        attempts=row["attempts"],
        last_status_code=row["last_status"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        next_attempt_at=row["next_attempt_at"],
    )


async def count_jobs_by_status(conn: Any) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for row in await conn.fetch(COUNT_JOBS_BY_STATUS):
        counts[row["status"]] = int(row["n"])
    return counts


# -- the projection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """The part of a job row that events change."""

    status: str
    steps: dict[str, dict[str, Any]]
    job_error: dict[str, Any] | None
    finished_at: datetime | None


def advance(current: str, target: str) -> str:
    """Status only moves forward; a terminal status is final."""
    if current in TERMINAL:
        return current
    return target if _RANK[target] > _RANK[current] else current


#: What a run reports while it works: its task begun (the job is `processing` from then
#: on), a step's result.
StepEvent = TaskStarted | StepCompleted | StepFailed
TerminalEvent = JobCompleted | JobFailed


def _completed(op: str, output: OutputInfo | MetadataOutput | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": COMPLETED, "op": op}
    if isinstance(output, OutputInfo):
        entry["output"] = output.model_dump(mode="json", exclude={"url"})
    elif output is not None:
        entry["output"] = output.model_dump(mode="json")
    return entry


def _failed(op: str, code: str, message: str) -> dict[str, Any]:
    return {"status": FAILED, "op": op, "code": code, "message": message}


def _record(steps: dict[str, dict[str, Any]], step: str, entry: dict[str, Any]) -> None:
    """Keep the first result of a step; only fill in an output it was recorded without."""
    current = steps.setdefault(step, entry)
    if "output" in entry and "output" not in current and current["status"] == COMPLETED:
        steps[step] = {**current, "output": entry["output"]}


def project(
    state: Progress, data: StepEvent | TerminalEvent, time: datetime, spec: Mapping[str, Any]
) -> Progress:
    """The state after one step or terminal event (pure). A step's first result is kept and
    status only moves forward, so a redelivered or late event changes nothing."""
    if isinstance(data, TaskStarted):
        return replace(state, status=advance(state.status, PROCESSING))
    steps = dict(state.steps)
    if isinstance(data, StepCompleted):
        _record(steps, data.step, _completed(data.op, data.output))
        return replace(state, status=advance(state.status, PROCESSING), steps=steps)
    if isinstance(data, StepFailed):
        _record(steps, data.step, _failed(data.op, data.code, data.message))
        return replace(state, status=advance(state.status, PROCESSING), steps=steps)
    # A terminal event lists outputs and errors; the step events may not be recorded yet.
    ops = {s.get("id"): s.get("op", "") for s in spec.get("steps", [])}
    for step, output in data.outputs.items():
        _record(steps, step, _completed(ops.get(step, ""), output))
    job_error = state.job_error
    if isinstance(data, JobFailed):
        for error in data.errors:
            if error.step is not None:
                _record(
                    steps, error.step, _failed(ops.get(error.step, ""), error.code, error.message)
                )
            elif job_error is None:
                job_error = {"code": error.code, "message": error.message}
    status = advance(state.status, COMPLETED if isinstance(data, JobCompleted) else FAILED)
    finished_at = state.finished_at or (time if status in TERMINAL else None)
    return Progress(status, steps, job_error, finished_at)


def fold(job: JobRecord | None, data: Data, time: datetime, tenant: str) -> JobRecord | None:
    """The job's row after one lifecycle event (pure; None: the job has no row). What
    `apply_events` writes, event after event: a step's first result is kept, status only
    moves forward and a result counts only for the job's current run, so a redelivered, late
    or reordered event changes nothing."""
    if isinstance(data, JobRequested):
        return _requested(job, data, time, tenant)
    if isinstance(data, JobRetried):
        if job is None:
            return None
        rerun = {s.id for s in rerun_steps(data.steps, data.outputs)}
        return reopened(job, data.run, rerun, time)
    if isinstance(data, StepEvent | TerminalEvent):
        # A result that overtook its job.requested makes a placeholder: steps_total = 0.
        job = job or _placeholder(data.job_id, time)
        if data.run != job.run:  # a late result of a run a retry replaced, or of none yet
            return job
        before = Progress(job.status, job.steps, job.job_error, job.finished_at)
        after = project(before, data, time, job.spec)
        if after == before:
            return job
        return replace(
            job,
            status=after.status,
            steps=after.steps,
            job_error=after.job_error,
            finished_at=after.finished_at,
            updated_at=max(job.updated_at, time),
        )
    return job


def reopened(job: JobRecord, run: int, rerun: Collection[str], time: datetime) -> JobRecord:
    """The job at the start of `run` (a retry): `processing` again, without the results of
    the steps in `rerun` nor a job-level error; unchanged when it is at `run` or later."""
    if job.run >= run:
        return job
    return replace(
        job,
        run=run,
        status=PROCESSING,
        steps={sid: entry for sid, entry in job.steps.items() if sid not in rerun},
        job_error=None,
        finished_at=None,
        updated_at=max(job.updated_at, time),
    )


def _placeholder(job_id: str, time: datetime) -> JobRecord:
    return JobRecord(job_id, QUEUED, 0, {}, None, None, {}, None, time, time, None)


def _requested(job: JobRecord | None, data: JobRequested, time: datetime, tenant: str) -> JobRecord:
    """A new queued row; or the details of a placeholder a result made when it overtook its
    job.requested (a real job has steps)."""
    details: dict[str, Any] = {
        "steps_total": len(data.steps),
        "spec": _spec_of(data),
        "source_key": data.source.key if isinstance(data.source, SourceKey) else None,
        "webhook_url": data.webhook_url,
        "tenant": tenant,
    }
    if job is None:
        return replace(_placeholder(data.job_id, time), **details)
    if job.steps_total != 0:
        return job
    return replace(job, **details, created_at=min(job.created_at, time))


async def apply_event(conn: Any, event: CloudEvent) -> None:
    """Project one lifecycle event onto `jobs`: `apply_events` of one."""
    if event.type in LIFECYCLE_TYPES:
        await apply_events(conn, [(event, parse_data(event))])


async def apply_events(conn: Any, events: Sequence[tuple[CloudEvent, Data]]) -> None:
    """Project lifecycle events onto `jobs` in their order: the rows `fold` makes of them
    one by one, in one transaction (a savepoint when the caller has one) of four statements
    whatever their number. Idempotent and safe in any order.

    Takes job.requested, job.retried, step.completed, step.failed, job.completed and
    job.failed (with their parsed data); other types are ignored."""
    by_job: dict[str, list[tuple[CloudEvent, Data]]] = {}
    for event, data in events:
        if event.type in LIFECYCLE_TYPES:
            by_job.setdefault(str(getattr(data, "job_id", "")), []).append((event, data))
    if not by_job:
        return
    ids = sorted(by_job)
    # Rows an event would make are made first (a placeholder each, `fold` then fills them
    # in), so that every row is locked below: a concurrent writer's new row is waited for.
    makes = [j for j in ids if any(not isinstance(d, JobRetried) for _, d in by_job[j])]
    async with conn.transaction():
        made: set[str] = set()
        if makes:
            times = [min(e.time for e, _ in by_job[j]) for j in makes]
            made = {r["job_id"] for r in await conn.fetch(INSERT_PLACEHOLDERS, makes, times)}
        rows = {r["job_id"]: JobRecord.from_row(r) for r in await conn.fetch(LOCK_JOBS, ids)}
        changed: list[JobRecord] = []
        for job_id in ids:
            before = None if job_id in made else rows.get(job_id)
            after = before
            for event, data in by_job[job_id]:
                after = fold(after, data, event.time, ownership.tenant_of(event))
            if after is not None and (after != before or job_id in made):
                changed.append(after)
        if changed:
            await conn.execute(UPDATE_JOBS, *_columns(changed))


def _columns(jobs: Sequence[JobRecord]) -> tuple[list[Any], ...]:
    """UPDATE_JOBS's arrays ($1 to $13) for `jobs`."""
    return (
        [j.job_id for j in jobs],
        [j.status for j in jobs],
        [j.steps_total for j in jobs],
        [json.dumps(j.spec) for j in jobs],
        [j.source_key for j in jobs],
        [j.webhook_url for j in jobs],
        [j.tenant for j in jobs],
        [json.dumps(j.steps) for j in jobs],
        [json.dumps(j.job_error) if j.job_error is not None else None for j in jobs],
        [j.created_at for j in jobs],
        [j.updated_at for j in jobs],
        [j.finished_at for j in jobs],
        [j.run for j in jobs],
    )


def _requested_spec(data: JobRequested) -> str:
    return json.dumps(_spec_of(data))


def _spec_of(data: JobRequested) -> dict[str, Any]:
    """The stored spec of a job.requested: its steps, and its webhook_url when it has one."""
    spec: dict[str, Any] = {"steps": [s.model_dump(mode="json") for s in data.steps]}
    if data.webhook_url is not None:
        spec["webhook_url"] = data.webhook_url
    if data.priority != INTERACTIVE:  # what a retry of the job runs in
        spec["priority"] = data.priority
    return spec
