"""The job records and the event projection, against the real PostgreSQL (a database per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from pixstream.db import repository
from pixstream.db.repository import IdempotencyKeyReused, apply_event
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    JOB_RETRIED,
    STEP_COMPLETED,
    STEP_FAILED,
    TASK_REQUESTED,
    TASK_STARTED,
    CloudEvent,
    ErrorInfo,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobRetried,
    OutputInfo,
    SourceKey,
    SourceUrl,
    StepCompleted,
    StepFailed,
    TaskRequested,
    TaskStarted,
    make_event,
    parse_data,
)
from pixstream.spec import StepSpec
from pixstream.worker import recorder

pytestmark = [pytest.mark.postgres]

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
STEPS = [
    StepSpec(id="web", op="resize", params={"width": 64}),
    StepSpec(id="webp", op="convert", params={"format": "webp"}, input="web"),
    StepSpec(id="thumb", op="thumbnail", params={"size": 16}),
]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


def output(job_id: str, step: str, fmt: str = "webp") -> OutputInfo:
    return OutputInfo(
        key=f"processed/{job_id}/{step}.{fmt}", format=fmt, width=64, height=48, bytes=999
    )


class Events:
    """The events of one job, timed from T0."""

    def __init__(self) -> None:
        self.job_id = uuid.uuid4().hex

    def requested(self, *, url_source: bool = False) -> CloudEvent:
        source = (
            SourceUrl.model_validate({"url": "https://example.com/a.jpg"})
            if url_source
            else SourceKey(key=f"raw/{self.job_id}/source.jpg")
        )
        data = JobRequested(
            job_id=self.job_id, steps=STEPS, webhook_url="https://example.com/h", source=source
        )
        return make_event(JOB_REQUESTED, data, time=T0)

    def step_completed(self, step: str, op: str, *, out: bool = True, at: int = 1) -> CloudEvent:
        data = StepCompleted(
            job_id=self.job_id, step=step, op=op, output=output(self.job_id, step) if out else None
        )
        return make_event(STEP_COMPLETED, data, time=T0 + timedelta(seconds=at))

    def step_failed(self, step: str, op: str, *, at: int = 2) -> CloudEvent:
        data = StepFailed(
            job_id=self.job_id, step=step, op=op, code="corrupt_image", message="truncated"
        )
        return make_event(STEP_FAILED, data, time=T0 + timedelta(seconds=at))

    def completed(self, *, at: int = 5) -> CloudEvent:
        outputs = {s: output(self.job_id, s) for s in ("webp", "thumb")}
        data = JobCompleted(job_id=self.job_id, outputs=outputs)
        return make_event(JOB_COMPLETED, data, time=T0 + timedelta(seconds=at))

    def failed(self, *, at: int = 5) -> CloudEvent:
        data = JobFailed(
            job_id=self.job_id,
            errors=[
                ErrorInfo(step=None, code="too_many_pixels", message="source is too large"),
                ErrorInfo(step="thumb", code="corrupt_image", message="truncated"),
            ],
            outputs={"webp": output(self.job_id, "webp")},
        )
        return make_event(JOB_FAILED, data, time=T0 + timedelta(seconds=at))


async def row(conn: Any, job_id: str) -> dict[str, Any]:
    record = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert record is not None
    return dict(record)


async def test_job_requested_inserts_a_queued_job_once(conn: Any) -> None:
    ev = Events()
    await apply_event(conn, ev.requested())
    first = await row(conn, ev.job_id)
    await apply_event(conn, ev.requested())
    assert await row(conn, ev.job_id) == first
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "queued"
    assert job.steps_total == 3
    assert job.created_at == T0
    assert job.source_key == f"raw/{ev.job_id}/source.jpg"
    assert job.webhook_url == "https://example.com/h"
    assert [s["id"] for s in job.spec["steps"]] == ["web", "webp", "thumb"]
    assert job.steps == {}


async def test_url_source_has_no_source_key(conn: Any) -> None:
    ev = Events()
    await apply_event(conn, ev.requested(url_source=True))
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.source_key is None


async def test_a_whole_job_projects_to_completed_and_replay_changes_nothing(conn: Any) -> None:
    ev = Events()
    events = [
        ev.requested(),
        ev.step_completed("web", "resize", out=False, at=1),
        ev.step_completed("webp", "convert", at=2),
        ev.step_completed("thumb", "thumbnail", at=3),
        ev.completed(at=4),
    ]
    await apply_event(conn, events[0])
    await apply_event(conn, events[1])
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "processing"
    assert job.steps == {"web": {"status": "completed", "op": "resize"}}
    for event in events[2:]:
        await apply_event(conn, event)
    final = await row(conn, ev.job_id)
    assert final["status"] == "completed"
    assert final["finished_at"] == T0 + timedelta(seconds=4)
    assert final["updated_at"] == T0 + timedelta(seconds=4)
    for event in events:  # a full redelivery
        await apply_event(conn, event)
    assert await row(conn, ev.job_id) == final
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.steps_done == 3
    assert list(job.outputs) == ["webp", "thumb"]
    assert job.outputs["thumb"] == output(ev.job_id, "thumb")
    assert job.errors() == []


async def test_out_of_order_events_never_move_status_backwards(conn: Any) -> None:
    ev = Events()
    # The terminal event first, then a step, then the request itself.
    await apply_event(conn, ev.completed(at=5))
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "completed"
    assert job.steps_total == 0  # a placeholder until job.requested arrives
    await apply_event(conn, ev.step_completed("web", "resize", out=False, at=1))
    await apply_event(conn, ev.requested())
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "completed"
    assert job.steps_total == 3
    assert job.source_key == f"raw/{ev.job_id}/source.jpg"
    assert job.created_at == T0  # the request's time, earlier than the placeholder's
    assert job.finished_at == T0 + timedelta(seconds=5)
    assert job.updated_at == T0 + timedelta(seconds=5)  # a late event does not rewind it
    # The terminal event named the outputs; ops come from the spec once it is known.
    assert set(job.outputs) == {"webp", "thumb"}
    assert job.steps["web"] == {"status": "completed", "op": "resize"}


async def test_a_terminal_status_is_final(conn: Any) -> None:
    ev = Events()
    await apply_event(conn, ev.requested())
    await apply_event(conn, ev.failed(at=5))
    await apply_event(conn, ev.completed(at=6))
    await apply_event(conn, ev.step_completed("thumb", "thumbnail", at=7))
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "failed"
    assert job.finished_at == T0 + timedelta(seconds=5)
    assert job.steps["thumb"]["status"] == "failed"  # a step's first result is kept


async def test_job_failed_records_the_job_error_and_step_errors(conn: Any) -> None:
    ev = Events()
    await apply_event(conn, ev.requested())
    await apply_event(conn, ev.step_failed("web", "resize", at=1))
    await apply_event(conn, ev.failed(at=5))
    before = await row(conn, ev.job_id)
    await apply_event(conn, ev.failed(at=5))
    await apply_event(conn, ev.step_failed("web", "resize", at=1))
    assert await row(conn, ev.job_id) == before
    job = await repository.get_job(conn, ev.job_id)
    assert job is not None
    assert job.status == "failed"
    assert job.job_error == {"code": "too_many_pixels", "message": "source is too large"}
    assert job.errors() == [
        {"step": None, "code": "too_many_pixels", "message": "source is too large"},
        {"step": "web", "code": "corrupt_image", "message": "truncated"},
        {"step": "thumb", "code": "corrupt_image", "message": "truncated"},
    ]
    assert job.steps["thumb"]["op"] == "thumbnail"  # op taken from the recorded spec
    assert list(job.outputs) == ["webp"]


async def test_other_event_types_are_ignored(conn: Any) -> None:
    ev = Events()
    task = make_event(
        TASK_REQUESTED,
        TaskRequested(job_id=ev.job_id, source_key="raw/x/source.jpg", steps=STEPS[:1]),
    )
    await apply_event(conn, task)
    assert await repository.get_job(conn, ev.job_id) is None


async def test_create_job_then_its_job_requested_changes_nothing(conn: Any) -> None:
    ev = Events()
    job = repository.NewJob(
        job_id=ev.job_id,
        spec_json='{"steps": [{"id": "web", "op": "resize", "params": {"width": 64}}]}',
        steps_total=1,
        source_key=f"raw/{ev.job_id}/source.jpg",
        webhook_url=None,
        tenant="anonymous",
        request_hash="h",
    )
    await repository.create_job(conn, job)
    before = await row(conn, ev.job_id)
    await apply_event(conn, ev.requested())
    assert await row(conn, ev.job_id) == before


async def test_idempotency_key_claims(conn: Any) -> None:
    async with conn.transaction():
        assert await repository.claim_idempotency_key(conn, "anonymous", "k1", "h1", "job-a") == (
            "job-a",
            True,
        )
    assert await repository.claim_idempotency_key(conn, "anonymous", "k1", "h1", "job-b") == (
        "job-a",
        False,
    )
    with pytest.raises(IdempotencyKeyReused, match="different request"):
        await repository.claim_idempotency_key(conn, "anonymous", "k1", "h2", "job-c")
    # After 24 h the key is free again and names the new job.
    await conn.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k1'"
    )
    assert await repository.claim_idempotency_key(conn, "anonymous", "k1", "h2", "job-d") == (
        "job-d",
        True,
    )
    assert await repository.claim_idempotency_key(conn, "anonymous", "k1", "h2", "job-e") == (
        "job-d",
        False,
    )


async def test_a_concurrent_claim_waits_for_the_first_transaction(database_url: str) -> None:
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        tx = first.transaction()
        await tx.start()
        assert await repository.claim_idempotency_key(first, "anonymous", "k", "h", "job-1") == (
            "job-1",
            True,
        )

        async def claim_second() -> tuple[str, bool]:
            async with second.transaction():
                return await repository.claim_idempotency_key(
                    second, "anonymous", "k", "h", "job-2"
                )

        waiting = asyncio.create_task(claim_second())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # blocked on the key until the first commits or rolls back
        await tx.rollback()
        assert await waiting == ("job-2", True)  # the first never happened
    finally:
        await first.close()
        await second.close()


async def test_webhook_status_reads_the_latest_delivery(conn: Any) -> None:
    ev = Events()
    assert await repository.webhook_status(conn, ev.job_id) is None
    await conn.execute(
        "INSERT INTO webhook_deliveries (event_id, job_id, url, body, state, attempts, "
        "last_status, last_error, delivered_at) "
        "VALUES ($1, $2, 'https://example.com/h', 'x', 'delivered', 2, 204, 'HTTP 503', $3)",
        f"{ev.job_id}.job.completed",
        ev.job_id,
        T0,
    )
    status = await repository.webhook_status(conn, ev.job_id)
    assert status == repository.WebhookStatus(
        state="delivered",
        attempts=2,
        last_status_code=204,
        last_error="HTTP 503",
        delivered_at=T0,
        next_attempt_at=status.next_attempt_at if status else None,
    )
    assert status is not None
    assert status.as_dict()["next_attempt_at"] is None  # only a pending delivery has one


async def test_count_jobs_by_status(conn: Any) -> None:
    a, b = Events(), Events()
    await apply_event(conn, a.requested())
    await apply_event(conn, b.requested())
    await apply_event(conn, b.completed())
    counts = await repository.count_jobs_by_status(conn)
    assert counts == {"queued": 1, "processing": 0, "completed": 1, "failed": 0}


async def test_idempotency_keys_are_per_tenant_and_a_reuse_names_no_job(conn: Any) -> None:
    assert await repository.claim_idempotency_key(conn, "acme", "order-1", "h1", "job-a") == (
        "job-a",
        True,
    )
    # Another tenant's same key is its own: a new job, not acme's.
    assert await repository.claim_idempotency_key(conn, "globex", "order-1", "h2", "job-b") == (
        "job-b",
        True,
    )
    assert await repository.idempotent_job(conn, "acme", "order-1", "h1") == "job-a"
    assert await repository.idempotent_job(conn, "initech", "order-1", "h1") is None
    with pytest.raises(IdempotencyKeyReused) as reused:
        await repository.idempotent_job(conn, "globex", "order-1", "h1")
    assert "job-" not in reused.value.message


async def _claim(conn: Any, job_id: str, digest: str, tenant: str = "acme") -> bool:
    job = repository.NewJob(
        job_id=job_id,
        spec_json='{"steps": [{"id": "t", "op": "thumbnail", "params": {"size": 8}}]}',
        steps_total=1,
        source_key=f"raw/{job_id}.jpg",
        webhook_url=None,
        tenant=tenant,
        request_hash=digest,
    )
    return await repository.claim_job_id(conn, job, datetime.now(UTC))


async def test_a_job_id_is_claimed_once_and_the_same_request_may_claim_it_again(
    conn: Any,
) -> None:
    assert await _claim(conn, "job-x", "d1")
    assert await _claim(conn, "job-x", "d1")  # a redelivery of the same request
    assert not await _claim(conn, "job-x", "d2", tenant="globex")  # another request
    job = await repository.get_job(conn, "job-x")
    assert job is not None
    assert job.tenant == "acme"


async def test_a_claim_racing_another_request_for_the_id_sees_it(database_url: str) -> None:
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        # The placeholder a step result makes when it overtakes its job.requested.
        overtaken = Events()
        await apply_event(first, overtaken.completed())
        await first.execute("UPDATE jobs SET job_id = 'job-y' WHERE job_id = $1", overtaken.job_id)
        tx = first.transaction()
        await tx.start()
        assert await _claim(first, "job-y", "d1")
        waiting = asyncio.create_task(_claim(second, "job-y", "d2", tenant="globex"))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # blocked on the row until the first claim ends
        await tx.commit()
        assert not await waiting  # the id is the first request's, committed meanwhile
        job = await repository.get_job(first, "job-y")
        assert job is not None
        assert (job.tenant, job.steps_total) == ("acme", 1)

        # A new id claimed by two requests at once: the second waits and sees the first.
        tx = first.transaction()
        await tx.start()
        assert await _claim(first, "job-z", "d1")
        waiting = asyncio.create_task(_claim(second, "job-z", "d2", tenant="globex"))
        await asyncio.sleep(0.3)
        await tx.commit()
        assert not await waiting
    finally:
        await first.close()
        await second.close()


async def test_jobs_are_listed_per_tenant_newest_first_in_pages(conn: Any) -> None:
    for i in range(5):
        await _claim(conn, f"job-{i}", f"d{i}", tenant="acme" if i != 2 else "globex")
        await conn.execute(
            "UPDATE jobs SET created_at = now() - make_interval(secs => $2) WHERE job_id = $1",
            f"job-{i}",
            100.0 - i,
        )
    first = await repository.list_jobs(conn, "acme", limit=2)
    assert [j.job_id for j in first] == ["job-4", "job-3"]
    rest = await repository.list_jobs(
        conn, "acme", limit=10, after=(first[-1].created_at, first[-1].job_id)
    )
    assert [j.job_id for j in rest] == ["job-1", "job-0"]
    assert await repository.list_jobs(conn, "acme", limit=10, status="completed") == []


def _scenarios() -> tuple[list[str], list[CloudEvent]]:
    """Five jobs' events interleaved as one partition may deliver them: results before their
    request, duplicates, a terminal event first, a retry with late results of the old run,
    a retry of a job with no row, task.started before and after, and the planner's
    job.requested of a job the ingress made (job 3, made by the caller)."""
    a, b, c, d, e = Events(), Events(), Events(), Events(), Events()

    def run1(ev: Events, step: str, op: str, at: int) -> CloudEvent:
        data = StepCompleted(
            job_id=ev.job_id, step=step, op=op, output=output(ev.job_id, step), run=1
        )
        return make_event(STEP_COMPLETED, data, time=T0 + timedelta(seconds=at))

    def retried(ev: Events, at: int) -> CloudEvent:
        data = JobRetried(
            job_id=ev.job_id,
            run=1,
            steps=STEPS,
            source_key=f"raw/{ev.job_id}/source.jpg",
            outputs={"webp": output(ev.job_id, "webp")},
        )
        return make_event(JOB_RETRIED, data, time=T0 + timedelta(seconds=at))

    def started(ev: Events, at: int) -> CloudEvent:
        data = TaskStarted(job_id=ev.job_id, op="resize", steps=["web", "webp"])
        return make_event(TASK_STARTED, data, time=T0 + timedelta(seconds=at))

    events = [
        started(d, 1),  # before the job's request: processing from then on
        a.step_completed("web", "resize", out=False, at=1),
        b.completed(at=5),
        retried(e, 2),  # no row: none is made
        a.requested(),
        c.step_completed("web", "resize", out=False, at=1),  # no row yet
        retried(c, 2),
        a.step_completed("web", "resize", out=False, at=1),  # a duplicate
        b.step_completed("web", "resize", out=False, at=1),
        a.step_failed("thumb", "thumbnail", at=2),
        d.requested(),
        started(b, 1),  # after its job's end: changes nothing
        a.failed(at=5),
        b.requested(),
        retried(a, 6),
        a.step_completed("webp", "convert", at=3),  # late: of the run the retry replaced
        run1(a, "thumb", "thumbnail", 7),
        c.requested(),
        a.failed(at=5),
        b.completed(at=5),
        a.requested(),
    ]
    return [ev.job_id for ev in (a, b, c, d, e)], events


async def _recorded(conn: Any, job_ids: list[str]) -> list[Any]:
    """The jobs' rows and logs, with their ids replaced by their position (comparable)."""
    found: list[Any] = []
    for n, job_id in enumerate(job_ids):
        job = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
        log = await conn.fetch(
            "SELECT event_id, type, event::text AS e FROM job_events WHERE job_id = $1 "
            "ORDER BY seq",
            job_id,
        )
        text = repr((dict(job) if job else None, [tuple(r) for r in log]))
        found.append(text.replace(job_id, f"job{n}"))
    return found


async def test_a_batch_is_recorded_as_its_events_one_by_one(conn: Any) -> None:
    singly, events = _scenarios()
    batched, in_batch = _scenarios()
    for made in (singly[3], batched[3]):  # the ingress's row of job 3
        await repository.create_job(conn, repository.NewJob(made, "{}", 3, None, None, "t", "h"))
        await conn.execute(
            "UPDATE jobs SET created_at = $2, updated_at = $2 WHERE job_id = $1", made, T0
        )
    for event in events:
        await recorder.record(conn, str(event.data["job_id"]), event)
    one_by_one = await _recorded(conn, singly)
    assert one_by_one[4].startswith("(None, [(")  # logged, but a retry alone makes no row
    retried = await repository.get_job(conn, singly[0])
    assert retried is not None
    assert (retried.status, retried.run) == ("processing", 1)
    assert retried.steps["thumb"]["status"] == "completed"  # its result in the new run

    batch = [(str(e.data["job_id"]), e, parse_data(e)) for e in in_batch]
    await recorder.record_many(conn, batch)
    assert await _recorded(conn, batched) == one_by_one

    # Delivered again, as one batch: nothing changes, nothing is logged twice.
    await recorder.record_many(conn, batch + batch)
    assert await _recorded(conn, batched) == one_by_one
