"""GET /v1/jobs/{id}/events against the real PostgreSQL and the real ingress: events are
written as the recorder writes them (projection and log in one transaction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from pixstream import sse
from pixstream.db import job_events
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    JOB_RETRIED,
    STEP_COMPLETED,
    STEP_FAILED,
    CloudEvent,
    ErrorInfo,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobRetried,
    OutputInfo,
    SourceKey,
    StepCompleted,
    StepFailed,
    make_event,
)
from pixstream.settings import Settings
from pixstream.spec import StepSpec
from pixstream.worker.recorder import record
from tests.conftest import ClientFactory
from tests.integration.conftest import SPEC

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.s3]

Client = TestClient[Any, Any]
STEPS = [StepSpec.model_validate(s) for s in SPEC["steps"]]


def lifecycle(job_id: str) -> list[CloudEvent]:
    """A three-step job's events, as the pipeline publishes them."""
    out = {
        sid: OutputInfo(
            key=f"processed/{job_id}/{sid}.jpg", format="jpeg", width=8, height=8, bytes=100
        )
        for sid in ("webp", "thumb")
    }
    return [
        make_event(
            JOB_REQUESTED,
            JobRequested(job_id=job_id, steps=STEPS, source=SourceKey(key=f"raw/{job_id}/s.jpg")),
        ),
        *(
            make_event(
                STEP_COMPLETED, StepCompleted(job_id=job_id, step=sid, op=op, output=out.get(sid))
            )
            for sid, op in (("web", "resize"), ("webp", "convert"), ("thumb", "thumbnail"))
        ),
        make_event(JOB_COMPLETED, JobCompleted(job_id=job_id, outputs=out)),
    ]


async def write(settings: Settings, job_id: str, *events: CloudEvent) -> None:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        for event in events:
            await record(conn, job_id, event)
    finally:
        await conn.close()


def messages(resp: aiohttp.ClientResponse) -> AsyncIterator[sse.Message]:
    """The messages of an open stream until the server ends it."""
    return sse.messages(resp.content)


async def collect(resp: aiohttp.ClientResponse) -> list[sse.Message]:
    return [m async for m in messages(resp)]


async def test_a_late_subscriber_gets_every_event_in_order_then_the_stream_ends(
    client: Client, topics: Settings
) -> None:
    events = lifecycle("late-1")
    await write(topics, "late-1", *events)

    async with client.get("/v1/jobs/late-1/events") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        received = await collect(resp)

    assert [m.id for m in received] == [e.id for e in events]
    assert [m.event for m in received] == [e.type for e in events]
    assert [CloudEvent.model_validate_json(m.data) for m in received] == events


async def test_a_live_subscriber_sees_events_as_they_are_recorded(
    client: Client, topics: Settings
) -> None:
    first, *rest = lifecycle("live-1")
    await write(topics, "live-1", first)
    async with client.get("/v1/jobs/live-1/events") as resp:
        stream = messages(resp)
        assert (await anext(stream)).id == first.id  # replayed; the job is still running
        await write(topics, "live-1", *rest)  # now wakes the subscriber through NOTIFY
        received = [m async for m in stream]
    assert [m.id for m in received] == [e.id for e in rest]


async def test_last_event_id_resumes_after_that_event(client: Client, topics: Settings) -> None:
    events = lifecycle("resume-1")
    await write(topics, "resume-1", *events)
    headers = {"Last-Event-ID": events[1].id}
    async with client.get("/v1/jobs/resume-1/events", headers=headers) as resp:
        received = await collect(resp)
    assert [m.id for m in received] == [e.id for e in events[2:]]

    # Resuming after the terminal event: nothing more will come, so the stream just ends.
    headers = {"Last-Event-ID": events[-1].id}
    async with client.get("/v1/jobs/resume-1/events", headers=headers) as resp:
        assert resp.status == 200
        assert await collect(resp) == []


async def test_an_unknown_last_event_id_replays_everything(
    client: Client, topics: Settings
) -> None:
    events = lifecycle("resume-2")
    await write(topics, "resume-2", *events)
    headers = {"Last-Event-ID": lifecycle("another-job")[1].id}
    async with client.get("/v1/jobs/resume-2/events", headers=headers) as resp:
        assert [m.id for m in await collect(resp)] == [e.id for e in events]


def failed_then_retried(job_id: str) -> tuple[list[CloudEvent], CloudEvent, list[CloudEvent]]:
    """A job whose first run fails one output, its retry, and the retry's run that makes it."""
    out = {
        sid: OutputInfo(
            key=f"processed/{job_id}/{sid}.jpg", format="jpeg", width=8, height=8, bytes=100
        )
        for sid in ("webp", "thumb")
    }
    source = f"raw/{job_id}/s.jpg"
    why = {"code": "too_many_pixels", "message": "over the budget"}
    first = [
        make_event(
            JOB_REQUESTED, JobRequested(job_id=job_id, steps=STEPS, source=SourceKey(key=source))
        ),
        make_event(STEP_COMPLETED, StepCompleted(job_id=job_id, step="web", op="resize")),
        make_event(
            STEP_COMPLETED,
            StepCompleted(job_id=job_id, step="webp", op="convert", output=out["webp"]),
        ),
        make_event(STEP_FAILED, StepFailed(job_id=job_id, step="thumb", op="thumbnail", **why)),
        make_event(
            JOB_FAILED,
            JobFailed(
                job_id=job_id,
                outputs={"webp": out["webp"]},
                errors=[ErrorInfo(step="thumb", **why)],
            ),
        ),
    ]
    retry = make_event(
        JOB_RETRIED,
        JobRetried(
            job_id=job_id, run=1, steps=STEPS, source_key=source, outputs={"webp": out["webp"]}
        ),
    )
    second = [
        make_event(
            STEP_COMPLETED,
            StepCompleted(job_id=job_id, step="thumb", op="thumbnail", output=out["thumb"], run=1),
        ),
        make_event(JOB_COMPLETED, JobCompleted(job_id=job_id, outputs=out, run=1)),
    ]
    return first, retry, second


async def test_the_stream_goes_on_past_a_failure_a_retry_follows_and_ends_after_the_retry(
    client: Client, topics: Settings
) -> None:
    first, retry, second = failed_then_retried("retried-1")
    await write(topics, "retried-1", *first, retry)  # as the ingress logs an accepted retry
    async with client.get("/v1/jobs/retried-1/events") as resp:
        stream = messages(resp)
        # Past job.failed: a stream that stopped at the first terminal event ends here.
        replayed = [await anext(stream) for _ in range(len(first) + 1)]
        await write(topics, "retried-1", *second)  # the retry's run, woken through NOTIFY
        live = [m async for m in stream]  # ends by itself after the run's terminal event
    assert [m.id for m in replayed] == [e.id for e in [*first, retry]]
    assert [m.id for m in live] == [e.id for e in second]
    assert live[-1].id == "retried-1.r1.job.completed"

    # Resuming at the failure goes on into the retry; at the retry's end, nothing is left.
    headers = {"Last-Event-ID": first[-1].id}
    async with client.get("/v1/jobs/retried-1/events", headers=headers) as resp:
        assert [m.id for m in await collect(resp)] == [e.id for e in [retry, *second]]
    headers = {"Last-Event-ID": second[-1].id}
    async with client.get("/v1/jobs/retried-1/events", headers=headers) as resp:
        assert await collect(resp) == []


@pytest.mark.parametrize("job_id", ["no-such-job", "bad%20id"])
async def test_an_unknown_job_is_a_404_problem(client: Client, job_id: str) -> None:
    async with client.get(f"/v1/jobs/{job_id}/events") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "not_found"


async def test_a_redelivered_event_is_logged_once(topics: Settings) -> None:
    events = lifecycle("dup-1")
    await write(topics, "dup-1", *events, events[1], events[-1])
    conn = await asyncpg.connect(topics.database_url.get_secret_value())
    try:
        logged = await job_events.read_after(conn, "dup-1", 0)
    finally:
        await conn.close()
    assert [e.event_id for e in logged] == [e.id for e in events]


async def test_keepalives_come_and_a_missed_notification_costs_nothing(
    topics: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(topics.model_copy(update={"sse_keepalive_seconds": 0.2}))
    first, *rest = lifecycle("quiet-1")
    await write(topics, "quiet-1", first)
    async with client.get("/v1/jobs/quiet-1/events") as resp:
        parser = sse.Parser()
        while parser.comments < 2:  # a comment line per keepalive while nothing happens
            parser.feed_line(await resp.content.readline())
        # Rows written without their NOTIFY (as if it were lost): the keepalive reads them.
        conn = await asyncpg.connect(topics.database_url.get_secret_value())
        try:
            for e in rest:
                await conn.execute(job_events.APPEND, e.id, "quiet-1", e.type, e.model_dump_json())
        finally:
            await conn.close()
        received = await collect(resp)
    assert [m.id for m in received if m.id] == [e.id for e in rest]


async def test_streams_beyond_the_limit_are_refused_with_503(
    topics: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(topics.model_copy(update={"max_event_subscribers": 1}))
    await write(topics, "busy-1", lifecycle("busy-1")[0])
    async with client.get("/v1/jobs/busy-1/events") as first:
        await anext(messages(first))  # the one slot is taken
        async with client.get("/v1/jobs/busy-1/events") as second:
            assert second.status == 503
            assert second.headers["Retry-After"]
            assert second.content_type == "application/problem+json"
    # The slot is free again once the first stream is gone.
    for _ in range(200):  # the server notices the closed connection within a second
        async with client.get("/v1/jobs/busy-1/events") as again:
            if again.status == 200:
                break
        await asyncio.sleep(0.05)
    assert again.status == 200


async def test_shutdown_ends_open_streams_cleanly(
    topics: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(topics)
    await write(topics, "open-1", lifecycle("open-1")[0])
    async with client.get("/v1/jobs/open-1/events") as resp:
        stream = messages(resp)
        await anext(stream)
        closing = asyncio.create_task(client.server.close())
        # A clean end of the body: the handler returned on shutdown. Had aiohttp cancelled
        # it at its shutdown timeout instead, the body would be cut (ClientPayloadError).
        assert [m async for m in stream] == []
        await closing


async def test_a_terminal_event_whose_check_failed_still_ends_the_stream(
    client: Client, topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a terminal event ends the stream is asked of PostgreSQL; should that one
    # question fail, the stream asks again instead of following a finished job for ever.
    from pixstream.db.failures import DatabaseUnavailable

    first, *rest = lifecycle("blip-1")
    await write(topics, "blip-1", first)
    real, failures = job_events.ends_stream, [1]

    async def blip(conn: Any, job_id: str, event: Any) -> bool:
        if failures:
            failures.pop()
            raise DatabaseUnavailable("PostgreSQL restarting")
        return await real(conn, job_id, event)

    monkeypatch.setattr(job_events, "ends_stream", blip)
    async with client.get("/v1/jobs/blip-1/events") as resp:
        stream = messages(resp)
        assert (await anext(stream)).id == first.id
        await write(topics, "blip-1", *rest)
        received = await asyncio.wait_for(collect_rest(stream), 30)
    assert [m.id for m in received] == [e.id for e in rest]
    assert not failures


async def collect_rest(stream: AsyncIterator[sse.Message]) -> list[sse.Message]:
    return [m async for m in stream]
