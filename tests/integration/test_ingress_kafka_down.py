"""503 while Kafka is down, on a private broker (the shared one is never stopped).

The refused request must leave no row and no event, not even once the broker is back; the
job accepted before the outage must still be on the topic afterwards, and complete.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from pixstream import kafka
from pixstream.events import CloudEvent
from pixstream.settings import Settings
from pixstream.stack.kafka import KafkaService
from pixstream.topics import apply_topics, load_topics
from tests.harness import WorkerProcess, wait_until
from tests.integration.conftest import ClientFactory, job_form

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

PRIVATE_BOOTSTRAP = "127.0.0.1:29092"
KAFKA_TIMEOUT = 3.0


def private_kafka(settings: Settings, home: Path) -> KafkaService:
    """A one-node broker under `home`, reusing the jars the local stack already gathered."""
    service = KafkaService(home, settings)
    shared_libs = KafkaService(settings.home.resolve(), settings).libs
    service.dir.mkdir(parents=True)
    service.libs.symlink_to(shared_libs, target_is_directory=True)
    return service


async def job_ids(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return [r["job_id"] for r in await conn.fetch("SELECT job_id FROM jobs")]
    finally:
        await conn.close()


async def job_statuses(settings: Settings, jobs: list[str]) -> set[str]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        rows = await conn.fetch("SELECT status FROM jobs WHERE job_id = ANY($1)", jobs)
        return {r["status"] for r in rows} if len(rows) == len(jobs) else set()
    finally:
        await conn.close()


async def events_on_jobs_topic(settings: Settings, *, settle_seconds: float) -> list[str]:
    """Every job id on the jobs topic, reading until nothing new came for `settle_seconds`."""
    found: list[str] = []
    async with kafka.open_consumer(
        settings, settings.topic("jobs"), group_id=f"{settings.app_id}-check"
    ) as consumer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(settle_seconds * 1000))
            if not batch and found:
                break
            for records in batch.values():
                found += [CloudEvent.parse(r.value).data["job_id"] for r in records]
    return found


async def test_kafka_down_is_503_and_nothing_half_accepted(
    settings: Settings, make_client: ClientFactory, tmp_path: Path
) -> None:
    private = settings.model_copy(update={"kafka_bootstrap": PRIVATE_BOOTSTRAP})
    broker = private_kafka(private, tmp_path / "stack")
    try:
        await asyncio.to_thread(broker.up)
        await apply_topics(PRIVATE_BOOTSTRAP, load_topics(private))
        client = await make_client(private, kafka_timeout=KAFKA_TIMEOUT)

        resp = await client.post("/v1/jobs", data=job_form())
        assert resp.status == 202, await resp.text()
        accepted = (await resp.json())["job_id"]

        await asyncio.to_thread(broker.down)
        started = time.monotonic()
        resp = await client.post("/v1/jobs", data=job_form())
        elapsed = time.monotonic() - started
        assert resp.status == 503, await resp.text()
        assert resp.content_type == "application/problem+json"
        assert int(resp.headers["Retry-After"]) > 0
        body = await resp.json(content_type="application/problem+json")
        assert "Kafka" in body["detail"]
        assert elapsed < KAFKA_TIMEOUT + 3  # bounded, not the client's patience
        assert await job_ids(private) == [accepted]  # rolled back: no row for the refusal

        await asyncio.to_thread(broker.up)
        # The accepted job's event survived; the refused one was never written, not even late.
        assert await events_on_jobs_topic(private, settle_seconds=3) == [accepted]
        resp = await client.post("/v1/jobs", data=job_form())
        assert resp.status == 202, await resp.text()  # the same producer recovered
        after = (await resp.json())["job_id"]

        # And every job that got a 202 completes, once a worker runs against this broker.
        worker = WorkerProcess(private, tmp_path / "worker.log").start()
        try:

            async def both_completed() -> bool:
                return await job_statuses(private, [accepted, after]) == {"completed"}

            assert await wait_until(both_completed, within=120), worker.log()
        finally:
            worker.stop()
    finally:
        await asyncio.to_thread(broker.down)
