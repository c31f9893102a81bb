"""Render once through the real pipeline: a second identical job copies the first one's
outputs (no decode, `reused_from`, the same bytes), and nothing is reused across tenants,
past an entry's expiry, or twice rendered for identical jobs in flight at once."""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from pixstream import kafka
from pixstream.events import JOB_COMPLETED, STEP_COMPLETED, TASK_STARTED, CloudEvent
from pixstream.ownership import with_tenant
from pixstream.settings import Settings
from pixstream.storage import open_storage, s3_client
from pixstream.topics import op_topic
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.harness import (
    CONTRACT_STEPS,
    TERMINAL,
    job_requested,
    jpeg_bytes,
    new_job_id,
    produce,
    submit,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

TENANT = "acme"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def reuse(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Pipeline, int]]:
    port = _free_port()
    async with running_pipeline(
        services,
        template_database,
        tmp_path_factory.mktemp("reuse"),
        extra_env={"PIXSTREAM_WORKER_METRICS_PORT": str(port)},
    ) as pipeline:
        yield pipeline, port


async def renders(port: int) -> float:
    """Tasks the worker decoded and rendered so far (`pixstream_renders_total`, all ops)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        float(v) for v in re.findall(r"^pixstream_renders_total\{[^}]*\} (\S+)$", text, re.M)
    )


async def run(pipeline: Pipeline, source: bytes, tenant: str = TENANT) -> dict[str, Any]:
    """Submit one job of the contract's spec and return its job.completed outputs."""
    job = await submit(pipeline.settings, source, tenant=tenant)
    await pipeline.watcher.wait_terminal([job])
    (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert terminal.type == JOB_COMPLETED, terminal.data
    outputs: dict[str, Any] = terminal.data["outputs"]
    return outputs


async def objects(pipeline: Pipeline, outputs: dict[str, Any]) -> dict[str, bytes]:
    async with open_storage(pipeline.settings) as storage:
        return {sid: await storage.get(out["key"]) for sid, out in outputs.items()}


async def test_second_identical_job_copies_the_first_without_decoding(
    reuse: tuple[Pipeline, int],
) -> None:
    pipeline, port = reuse
    source = jpeg_bytes((1200, 900), color=(10, 120, 200))
    before = await renders(port)
    first = await run(pipeline, source)
    assert await renders(port) == before + 1
    assert all(out.get("reused_from") is None for out in first.values())

    first_job = first["webp"]["key"].split("/")[1]
    second = await run(pipeline, source)

    assert await renders(port) == before + 1  # no decode, no render
    assert {sid: out["reused_from"] for sid, out in second.items()} == {
        "webp": first_job,
        "thumb": first_job,
    }
    assert second["webp"]["key"] != first["webp"]["key"]  # a copy under the new job's key
    assert await objects(pipeline, second) == await objects(pipeline, first)
    for sid in first:  # the same entry otherwise
        drop = {"key", "reused_from"}
        assert {k: v for k, v in second[sid].items() if k not in drop} == {
            k: v for k, v in first[sid].items() if k not in drop
        }


async def test_the_planner_answers_a_job_whose_outputs_are_all_retained(
    reuse: tuple[Pipeline, int],
) -> None:
    pipeline, _ = reuse
    source = jpeg_bytes((1100, 700), color=(60, 60, 160))
    first = await submit(pipeline.settings, source, tenant=TENANT)
    await pipeline.watcher.wait_terminal([first])
    # At once: each output is indexed before its step is reported, so by the job's end
    # every entry is ready (not still claimed, which would send the job to an op agent).
    second = await submit(pipeline.settings, source, tenant=TENANT)
    await pipeline.watcher.wait_terminal([second])
    (done,) = pipeline.watcher.of_type(second, JOB_COMPLETED)
    assert {out["reused_from"] for out in done.data["outputs"].values()} == {first}
    # No task: the source's checksum told the planner its sha256, and the index every output.
    assert pipeline.watcher.of_type(first, TASK_STARTED)
    assert not pipeline.watcher.of_type(second, TASK_STARTED)
    steps = pipeline.watcher.of_type(second, STEP_COMPLETED)
    assert sorted(e.data["step"] for e in steps) == sorted(s.id for s in CONTRACT_STEPS)


async def test_a_source_stored_without_a_sha256_is_read_and_still_reused(
    reuse: tuple[Pipeline, int],
) -> None:
    pipeline, port = reuse
    source = jpeg_bytes((1000, 600), color=(160, 60, 60))
    first = await submit(pipeline.settings, source, tenant=TENANT)
    await pipeline.watcher.wait_terminal([first])
    assert await _kept(pipeline)
    # As another system might store it: botocore's default checksum (CRC32), no SHA-256.
    second = new_job_id()
    key = f"raw/{second}/source.jpg"
    async with s3_client(pipeline.settings) as client:
        await client.put_object(Bucket=pipeline.settings.s3_bucket, Key=key, Body=source)
    async with open_storage(pipeline.settings) as storage:
        assert await storage.sha256(key) is None
    before = await renders(port)
    event = with_tenant(job_requested(second, key), TENANT)
    await produce(pipeline.settings, "jobs", event.to_bytes(), second)
    await pipeline.watcher.wait_terminal([second])
    (done,) = pipeline.watcher.of_type(second, JOB_COMPLETED)
    assert {out["reused_from"] for out in done.data["outputs"].values()} == {first}
    assert pipeline.watcher.of_type(second, TASK_STARTED)  # the op agent read and hashed it
    assert await renders(port) == before


async def test_a_task_carries_the_sha256_the_endpoint_kept(reuse: tuple[Pipeline, int]) -> None:
    pipeline, _ = reuse
    source = jpeg_bytes((800, 500), color=(90, 160, 60))
    job = await submit(pipeline.settings, source, tenant=TENANT)
    await pipeline.watcher.wait_terminal([job])
    # The op agent keys render once by it rather than hashing the bytes again.
    task = await _task_of(pipeline.settings, job)
    assert task["source_sha256"] == hashlib.sha256(source).hexdigest()


async def _task_of(settings: Settings, job: str) -> dict[str, Any]:
    """The data of `job`'s task on the resize op topic (the contract spec's first step)."""
    topic = settings.topic(op_topic("resize", "interactive"))
    async with kafka.open_consumer(settings, topic, group_id=None) as consumer:
        while True:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"no task for job {job} on {topic}"
            for records in batch.values():
                for record in records:
                    if record.key == job.encode():
                        data: dict[str, Any] = CloudEvent.parse(record.value).data
                        return data


async def _kept(pipeline: Pipeline) -> bool:
    """Whether every claim of the tenant turned into a retained entry (a task keeps its
    renders after its step events, so right after a terminal event it may still hold one)."""
    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())
    try:

        async def kept() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM renditions WHERE tenant = $1 AND state = 'rendering'",
                TENANT,
            )

        return await wait_until(kept, within=20)
    finally:
        await conn.close()


async def test_another_tenant_renders_its_own(reuse: tuple[Pipeline, int]) -> None:
    pipeline, port = reuse
    source = jpeg_bytes((1000, 800), color=(200, 200, 10))
    await run(pipeline, source)
    before = await renders(port)
    other = await run(pipeline, source, tenant="globex")
    assert await renders(port) == before + 1
    assert all(out.get("reused_from") is None for out in other.values())


async def test_an_expired_entry_renders_again(reuse: tuple[Pipeline, int]) -> None:
    pipeline, port = reuse
    source = jpeg_bytes((900, 700), color=(30, 200, 30))
    await run(pipeline, source)
    assert await _kept(pipeline)
    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())
    try:
        expired = await conn.execute(
            "UPDATE renditions SET expires_at = now() - interval '1 second'"
            " WHERE tenant = $1 AND state = 'ready'",
            TENANT,
        )
    finally:
        await conn.close()
    assert expired != "UPDATE 0"
    before = await renders(port)
    again = await run(pipeline, source)
    assert await renders(port) == before + 1
    assert all(out.get("reused_from") is None for out in again.values())


async def test_identical_jobs_in_flight_together_render_once(reuse: tuple[Pipeline, int]) -> None:
    pipeline, port = reuse
    source = jpeg_bytes((2400, 1800), color=(120, 10, 90))
    before = await renders(port)
    jobs = [await submit(pipeline.settings, source, tenant=TENANT) for _ in range(3)]
    await pipeline.watcher.wait_terminal(jobs)
    outputs = [pipeline.watcher.of_type(j, JOB_COMPLETED)[0].data["outputs"] for j in jobs]
    assert await renders(port) == before + 1
    # One job rendered (whichever claimed first); the others copied its outputs, whether they
    # waited on its claim or came after it.
    pairs = list(zip(jobs, outputs, strict=True))
    (origin,) = [j for j, o in pairs if o["webp"].get("reused_from") is None]
    copies = [o for j, o in pairs if j != origin]
    assert {out["reused_from"] for o in copies for out in o.values()} == {origin}
