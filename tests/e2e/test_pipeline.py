"""The pipeline end to end: jobs produced to Kafka, outputs in S3, events, records."""

from __future__ import annotations

import io

import asyncpg
import pytest
from aiokafka.structs import ConsumerRecord
from PIL import Image

from pixstream import redelivery as hdr
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    STEP_COMPLETED,
    TASK_REQUESTED,
    TaskRequested,
    make_event,
    parse_data,
)
from pixstream.kafka import open_consumer
from pixstream.storage import open_storage, s3_client
from tests.e2e.conftest import Pipeline
from tests.harness import (
    CONTRACT_STEPS,
    TERMINAL,
    jpeg_bytes,
    produce,
    put_source,
    submit,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]


async def _object(pipeline: Pipeline, key: str) -> Image.Image:
    async with open_storage(pipeline.settings) as storage:
        return Image.open(io.BytesIO(await storage.get(key)))


async def _keys(pipeline: Pipeline, prefix: str) -> list[str]:
    async with s3_client(pipeline.settings) as client:
        resp = await client.list_objects_v2(Bucket=pipeline.settings.s3_bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


async def test_fan_out_dag_completes_with_every_output(pipeline: Pipeline) -> None:
    job = await submit(pipeline.settings, jpeg_bytes((2400, 1600)))
    await pipeline.watcher.wait_terminal([job])

    (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert terminal.type == JOB_COMPLETED
    outputs = terminal.data["outputs"]
    assert set(outputs) == {"webp", "thumb"}  # "web" feeds "webp": not an output
    webp = await _object(pipeline, outputs["webp"]["key"])
    assert (webp.format, webp.size) == ("WEBP", (1024, 683))
    thumb = await _object(pipeline, outputs["thumb"]["key"])
    assert (thumb.format, max(thumb.size)) == ("JPEG", 256)
    assert outputs["webp"]["key"] == f"processed/{job}/webp.webp"
    assert await _keys(pipeline, f"processed/{job}/") == sorted(
        [f"processed/{job}/webp.webp", f"processed/{job}/thumb.jpg"]
    )
    steps = {e.data["step"] for e in pipeline.watcher.of_type(job, STEP_COMPLETED)}
    assert steps == {"web", "webp", "thumb"}


async def test_job_is_recorded_in_postgres(pipeline: Pipeline) -> None:
    job = await submit(pipeline.settings)
    await pipeline.watcher.wait_terminal([job])
    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())

    async def recorded() -> bool:  # the recorder is another consumer of the same events
        status = await conn.fetchval("SELECT status FROM jobs WHERE job_id = $1", job)
        return bool(status == "completed")

    try:
        await wait_until(recorded, within=20)
        row = await conn.fetchrow(
            "SELECT status, steps_total, source_key FROM jobs WHERE job_id = $1", job
        )
    finally:
        await conn.close()
    assert row is not None
    assert dict(row) == {
        "status": "completed",
        "steps_total": 3,
        "source_key": f"raw/{job}/source.jpg",
    }


async def test_a_task_delivered_twice_has_one_effect(pipeline: Pipeline) -> None:
    job = await submit(pipeline.settings)
    await pipeline.watcher.wait_terminal([job])
    # Redeliver the very task the planner sent, as Kafka would after a crash.
    task = make_event(
        TASK_REQUESTED,
        TaskRequested(job_id=job, source_key=f"raw/{job}/source.jpg", steps=CONTRACT_STEPS),
    )
    await produce(pipeline.settings, "op.resize", task.to_bytes(), job)
    marker = await submit(pipeline.settings)  # same topics, processed after the duplicate
    await pipeline.watcher.wait_terminal([marker])

    assert len(pipeline.watcher.of_type(job, *TERMINAL)) == 1
    assert len(await _keys(pipeline, f"processed/{job}/")) == 2
    completed = pipeline.watcher.of_type(job, STEP_COMPLETED)
    assert len({e.id for e in completed}) == 3  # redelivered results reuse their event ids


async def test_corrupt_image_fails_the_job_with_its_code(pipeline: Pipeline) -> None:
    truncated = jpeg_bytes()[:3000]
    job = await submit(pipeline.settings, truncated)
    await pipeline.watcher.wait_terminal([job])
    (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert terminal.type == JOB_FAILED
    codes = {e["code"] for e in terminal.data["errors"]}
    assert codes == {"corrupt_image"}


async def test_missing_source_and_bad_spec_fail_with_codes(pipeline: Pipeline) -> None:
    from tests.harness import job_requested, new_job_id

    missing = new_job_id()
    await produce(
        pipeline.settings,
        "jobs",
        job_requested(missing, f"raw/{missing}/nothing.jpg").to_bytes(),
        missing,
    )
    cyclic = new_job_id()
    key = await put_source(pipeline.settings, cyclic, jpeg_bytes((64, 64)))
    event = job_requested(cyclic, key).model_copy(
        update={
            "data": {
                "job_id": cyclic,
                "source": {"key": key},
                "steps": [
                    {"id": "a", "op": "blur", "params": {"radius": 1}, "input": "b"},
                    {"id": "b", "op": "blur", "params": {"radius": 1}, "input": "a"},
                ],
            }
        }
    )
    await produce(pipeline.settings, "jobs", event.to_bytes(), cyclic)
    await pipeline.watcher.wait_terminal([missing, cyclic])

    (m,) = pipeline.watcher.of_type(missing, *TERMINAL)
    assert m.type == JOB_FAILED
    assert m.data["errors"][0]["code"] == "source_unavailable"
    (c,) = pipeline.watcher.of_type(cyclic, *TERMINAL)
    assert c.type == JOB_FAILED
    assert c.data["errors"][0]["code"] == "invalid_spec"
    assert "cycle" in c.data["errors"][0]["message"]


async def test_garbage_goes_to_the_dlq_and_the_next_job_completes(pipeline: Pipeline) -> None:
    await produce(
        pipeline.settings,
        "jobs",
        b"\x00not json at all\xff",
        "garbage-1",
        headers=[("origin", b"fuzzer")],
    )
    job = await submit(pipeline.settings)
    await pipeline.watcher.wait_terminal([job])
    assert pipeline.watcher.of_type(job, JOB_COMPLETED)

    records: list[ConsumerRecord[bytes, bytes]] = []
    async with open_consumer(
        pipeline.settings, pipeline.settings.topic("dlq"), group_id=None
    ) as consumer:

        async def dead_lettered() -> bool:  # on another partition than the job: no order
            batch = await consumer.getmany(timeout_ms=1000)
            records.extend(r for rs in batch.values() for r in rs if r.key == b"garbage-1")
            return bool(records)

        assert await wait_until(dead_lettered, within=60)
    # A copy after a re-read is the same dead letter again (at-least-once).
    dead = records[0]
    assert {r.value for r in records} == {dead.value}
    assert dead.value == b"\x00not json at all\xff"
    headers = dict(dead.headers)
    assert headers["origin"] == b"fuzzer"
    assert headers[hdr.DLQ_TOPIC] == pipeline.settings.topic("jobs").encode()
    assert int(headers[hdr.DLQ_PARTITION]) >= 0
    assert int(headers[hdr.DLQ_OFFSET]) >= 0
    assert headers[hdr.DLQ_ERROR_CLASS] == b"pixstream.errors.InvalidEvent"
    assert headers[hdr.DLQ_ERROR_MESSAGE]
    assert headers[hdr.DLQ_ATTEMPTS] == b"1"
    assert headers[hdr.DLQ_TIME].startswith(b"20")


async def test_step_events_match_their_schema_models(pipeline: Pipeline) -> None:
    job = await submit(pipeline.settings)
    await pipeline.watcher.wait_terminal([job])
    for event in pipeline.watcher.events[job]:
        parse_data(event)  # raises when an event does not match its published model
        assert event.specversion == "1.0"


async def test_a_source_key_outside_the_allowed_prefixes_fails_without_being_read(
    pipeline: Pipeline,
) -> None:
    from tests.harness import job_requested, new_job_id

    job = new_job_id()
    # Another job's output is a real object: the prefix, not its absence, refuses it.
    elsewhere = f"processed/{job}/stolen.jpg"
    async with open_storage(pipeline.settings) as storage:
        await storage.put(elsewhere, jpeg_bytes(), "image/jpeg")
    await produce(pipeline.settings, "jobs", job_requested(job, elsewhere).to_bytes(), job)
    await pipeline.watcher.wait_terminal([job])
    (failed,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert failed.type == JOB_FAILED
    assert failed.data["errors"][0]["code"] == "source_forbidden"
    assert "raw/" in failed.data["errors"][0]["message"]


async def test_a_job_id_taken_by_another_request_is_dead_lettered_and_the_job_untouched(
    pipeline: Pipeline,
) -> None:
    from pixstream.ownership import with_tenant
    from tests.harness import job_requested

    job = await submit(pipeline.settings, tenant="acme")
    await pipeline.watcher.wait_terminal([job])
    outputs = await _keys(pipeline, f"processed/{job}/")
    before = [(e.id, e.type) for e in pipeline.watcher.events[job]]
    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())
    try:

        async def recorded() -> bool:  # the recorder's batch lands after the event
            status = await conn.fetchval("SELECT status FROM jobs WHERE job_id = $1", job)
            return bool(status == "completed")

        assert await wait_until(recorded, within=20)
        row = dict(await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job))
    finally:
        await conn.close()
    assert row["tenant"] == "acme"

    # Another system reuses the id for a request of its own, from another tenant.
    key = await put_source(pipeline.settings, f"{job}-other", jpeg_bytes((20, 20)))
    other = with_tenant(
        job_requested(job, key, [CONTRACT_STEPS[0].model_copy(update={"id": "x"})]), "globex"
    )
    await produce(pipeline.settings, "jobs", other.to_bytes(), job)
    async with open_consumer(
        pipeline.settings, pipeline.settings.topic("dlq"), group_id=None
    ) as consumer:

        async def conflict() -> list[dict[str, bytes]]:
            batch = await consumer.getmany(timeout_ms=1000)
            return [dict(r.headers) for rs in batch.values() for r in rs if r.key == job.encode()]

        found: list[dict[str, bytes]] = []

        async def dead_lettered() -> bool:
            found.extend(await conflict())
            return bool(found)

        assert await wait_until(dead_lettered, within=60)
    for headers in found:  # copies after a re-read say the same
        assert headers[hdr.DLQ_ERROR_CODE] == b"job_id_conflict"
        assert headers[hdr.DLQ_ERROR_CLASS] == b"pixstream.errors.JobIdConflict"

    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())
    try:
        after = dict(await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job))
    finally:
        await conn.close()
    assert after == row
    assert await _keys(pipeline, f"processed/{job}/") == outputs
    assert [(e.id, e.type) for e in pipeline.watcher.events[job]] == before
