"""Live progress through the real pipeline: a `pixstream worker` records the events, the real
ingress streams them from GET /v1/jobs/{id}/events to subscribers that came before the job
ran, after it ended, and back with Last-Event-ID."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from pixstream import sse
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    STEP_COMPLETED,
    STEP_FAILED,
    CloudEvent,
)
from pixstream.settings import Settings
from tests.e2e.conftest import Pipeline
from tests.harness import job_requested, jpeg_bytes, new_job_id, produce, put_source, submit

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

Client = TestClient[Any, Any]


async def stream(client: Client, job_id: str, last_event_id: str | None = None) -> list[Any]:
    """Every message of the job's stream, read until the server ends it."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with client.get(f"/v1/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await read_all(resp)


async def read_all(resp: Any) -> list[sse.Message]:
    return [message async for message in sse.messages(resp.content)]


async def announce(settings: Settings, job_id: str) -> None:
    """The job's row before its request is produced, as the ingress writes it; a placeholder
    (no steps yet) that the recorder fills in from job.requested."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await conn.execute(
            "INSERT INTO jobs (job_id, status, steps_total, spec) VALUES ($1, 'queued', 0, '{}')",
            job_id,
        )
    finally:
        await conn.close()


async def test_subscribers_before_and_after_a_job_get_the_same_events(
    pipeline: Pipeline, api: Client
) -> None:
    job_id = new_job_id()
    await announce(pipeline.settings, job_id)
    async with api.get(f"/v1/jobs/{job_id}/events") as early:
        assert early.status == 200  # subscribed: the job has not even been requested yet
        key = await put_source(pipeline.settings, job_id, jpeg_bytes((1200, 800)))
        await produce(pipeline.settings, "jobs", job_requested(job_id, key).to_bytes(), job_id)
        live = await read_all(early)  # ends by itself after the terminal event

    types = [m.event for m in live]
    assert types[0] == JOB_REQUESTED
    assert sorted(types[1:-1]) == [STEP_COMPLETED] * 3
    assert types[-1] == JOB_COMPLETED
    events = [CloudEvent.model_validate_json(m.data) for m in live]
    assert [m.id for m in live] == [e.id for e in events]
    assert {e.data["job_id"] for e in events} == {job_id}
    assert events[-1].data["outputs"].keys() == {"webp", "thumb"}

    late = await stream(api, job_id)  # the job is over: a full replay, then the end
    assert late == live
    resumed = await stream(api, job_id, last_event_id=live[1].id)
    assert resumed == live[2:]
    assert await stream(api, job_id, last_event_id=live[-1].id) == []


async def test_a_failed_job_ends_its_stream_with_job_failed(
    pipeline: Pipeline, api: Client
) -> None:
    job_id = await submit(pipeline.settings, jpeg_bytes()[:3000])  # a truncated JPEG
    await pipeline.watcher.wait_terminal([job_id])
    # Recorded already (job.requested came first on the partition), so the stream opens
    # and ends once the recorder has the terminal event too.
    got = await stream(api, job_id)
    assert got[-1].event == JOB_FAILED
    assert {m.event for m in got[1:-1]} == {STEP_FAILED}
    assert "corrupt_image" in got[-1].data


async def test_an_unknown_job_is_a_404(api: Client) -> None:
    async with api.get(f"/v1/jobs/{new_job_id()}/events") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
