"""Live progress through the real pipeline: a `pixstream worker` records the events, the real
ingress streams them from GET /v1/jobs/{id}/events to subscribers that came before the job
ran, after it ended, and back with Last-Event-ID; a job is `processing` once its task starts,
and each step's event comes when that step is done, not when the whole render is."""

from __future__ import annotations

import random
from dataclasses import dataclass
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
    TASK_STARTED,
    CloudEvent,
)
from pixstream.plan import Plan
from pixstream.settings import Settings
from pixstream.spec import StepSpec
from pixstream.storage import open_storage
from tests.e2e.conftest import Pipeline
from tests.harness import (
    job_requested,
    jpeg_bytes,
    new_job_id,
    produce,
    put_source,
    submit,
    wait_until,
)

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
    assert types[:2] == [JOB_REQUESTED, TASK_STARTED]
    assert sorted(types[2:-1]) == [STEP_COMPLETED] * 3
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

    async def recorded() -> bool:  # the recorder writes the row after the events are out
        async with api.get(f"/v1/jobs/{job_id}") as resp:
            return resp.status == 200

    # Once the row exists the stream opens, and ends once the recorder has the terminal
    # event too.
    assert await wait_until(recorded, within=20)
    got = await stream(api, job_id)
    assert got[-1].event == JOB_FAILED
    assert got[1].event == TASK_STARTED
    assert {m.event for m in got[2:-1]} == {STEP_FAILED}
    assert "corrupt_image" in got[-1].data


# A chain whose first step is quick and whose last ones take seconds: a 64 px thumbnail,
# then the source upscaled to 27 MP, blurred, sharpened and encoded as PNG.
FIVE_STEPS = [
    StepSpec(id="thumb", op="thumbnail", params={"size": 64}),
    StepSpec(id="big", op="resize", params={"width": 6000, "upscale": True}),
    StepSpec(id="blurred", op="blur", params={"radius": 40}, input="big"),
    StepSpec(id="sharp", op="sharpen", params={"radius": 4, "percent": 150}, input="blurred"),
    StepSpec(id="png", op="convert", params={"format": "png"}, input="sharp"),
]


@dataclass(frozen=True)
class Seen:
    """One message of the stream, and what the API and the bucket said right after it."""

    event: str
    step: str | None
    status: str
    recorded: frozenset[str]  # steps with a result in the job's record
    last_output_stored: bool


async def test_a_five_step_job_moves_step_by_step(pipeline: Pipeline, api: Client) -> None:
    settings = pipeline.settings
    job_id = new_job_id()
    last_key = Plan.output_key(job_id, "png", "png")
    await announce(settings, job_id)
    color = (random.randrange(256), 40, 40)  # a source of its own: nothing to reuse
    seen: list[Seen] = []
    async with (
        open_storage(settings) as storage,
        api.get(f"/v1/jobs/{job_id}/events") as resp,
    ):
        assert resp.status == 200
        key = await put_source(settings, job_id, jpeg_bytes((1200, 800), color=color))
        await produce(
            settings, "jobs", job_requested(job_id, key, steps=FIVE_STEPS).to_bytes(), job_id
        )
        async for message in sse.messages(resp.content):  # ends after the terminal event
            async with api.get(f"/v1/jobs/{job_id}") as got:
                job = await got.json()
            event = CloudEvent.model_validate_json(message.data)
            seen.append(
                Seen(
                    event=message.event,
                    step=event.data.get("step"),
                    status=job["status"],
                    recorded=frozenset(job["outputs"]) | {e["step"] for e in job["errors"]},
                    last_output_stored=await storage.exists(last_key),
                )
            )

    assert [(s.event, s.step) for s in seen] == [
        (JOB_REQUESTED, None),
        (TASK_STARTED, None),
        *[(STEP_COMPLETED, step.id) for step in FIVE_STEPS],  # in plan order, each once
        (JOB_COMPLETED, None),
    ]
    by_step = {s.step: s for s in seen if s.step is not None}
    started = seen[1]
    # The record says processing as soon as the task starts (before any step is done), and
    # while the render runs.
    assert started.status == "processing"
    assert not started.last_output_stored
    # The first steps' events arrive while the last step is still rendering: its object is
    # not written yet and the job is not over. Before, every event waited for the whole
    # render, and the last output was stored before the first event was sent.
    for early in ("thumb", "big"):
        assert by_step[early].status == "processing", by_step[early]
        assert not by_step[early].last_output_stored, by_step[early]
    assert "png" not in by_step["thumb"].recorded
    assert by_step["png"].last_output_stored  # stored before its event
    assert seen[-1].status == "completed"
    assert set(job["outputs"]) == {"thumb", "png"}


async def test_an_unknown_job_is_a_404(api: Client) -> None:
    async with api.get(f"/v1/jobs/{new_job_id()}/events") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
