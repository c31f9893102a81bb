"""The outbox: Kafka away, or the ingress killed between its commit and the publish, and
every job that got a 202 still completes, once; no 503 hides a job that runs.

The outage is on a private broker (the shared one is never stopped).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from pixstream import kafka
from pixstream.events import CloudEvent
from pixstream.settings import Settings
from pixstream.stack.kafka import KafkaService
from pixstream.topics import apply_topics, load_topics
from tests.conftest import ClientFactory
from tests.harness import TERMINAL, EventWatcher, IngressProcess, WorkerProcess, wait_until
from tests.integration.conftest import job_form

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

PRIVATE_BOOTSTRAP = "127.0.0.1:29092"
NOBODY_LISTENS = "127.0.0.1:1"  # a broker that is never there


def private_kafka(settings: Settings, home: Path) -> KafkaService:
    """A one-node broker under `home`, reusing the jars the local stack already gathered."""
    service = KafkaService(home, settings)
    shared_libs = KafkaService(settings.home.resolve(), settings).libs
    service.dir.mkdir(parents=True)
    service.libs.symlink_to(shared_libs, target_is_directory=True)
    return service


async def fetch(settings: Settings, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def statuses(settings: Settings, jobs: list[str]) -> set[str]:
    rows = await fetch(settings, "SELECT status FROM jobs WHERE job_id = ANY($1)", jobs)
    return {r["status"] for r in rows} if len(rows) == len(jobs) else set()


async def ids_on_jobs_topic(
    settings: Settings, expected: set[str], *, settle_seconds: float
) -> list[str]:
    """Every job id on the jobs topic, reading until `expected` are all there and nothing new
    came for `settle_seconds` (a relay back from an outage may first sit out a send's
    timeout and its backoff)."""
    found: list[str] = []
    async with kafka.open_consumer(
        settings, settings.topic("jobs"), group_id=f"{settings.app_id}-check"
    ) as consumer:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(settle_seconds * 1000))
            if not batch and expected <= set(found):
                break
            for records in batch.values():
                found += [CloudEvent.parse(r.value).data["job_id"] for r in records]
    return found


async def accepted(client: object, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        resp = await client.post("/v1/jobs", data=job_form())  # type: ignore[attr-defined]
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["job_id"])
    return ids


async def test_a_broker_outage_during_posts_is_202s_that_all_complete(
    settings: Settings, make_client: ClientFactory, tmp_path: Path
) -> None:
    private = settings.model_copy(update={"kafka_bootstrap": PRIVATE_BOOTSTRAP})
    broker = private_kafka(private, tmp_path / "stack")
    try:
        await asyncio.to_thread(broker.up)
        await apply_topics(PRIVATE_BOOTSTRAP, load_topics(private))
        client = await make_client(private)
        before = await accepted(client, 1)

        await asyncio.to_thread(broker.down)
        # Accepted while the broker is away: PostgreSQL and S3 are all a 202 needs.
        during = await accepted(client, 3)
        waiting = await fetch(private, "SELECT key FROM outbox")
        assert {r["key"] for r in waiting} >= set(during)

        await asyncio.to_thread(broker.up)
        published = await ids_on_jobs_topic(private, set(before + during), settle_seconds=3)
        assert set(published) == set(before + during)

        async def outbox_empty() -> bool:
            return not await fetch(private, "SELECT id FROM outbox")

        assert await wait_until(outbox_empty, within=30)
        worker = WorkerProcess(private, tmp_path / "worker.log").start()
        try:

            async def all_completed() -> bool:
                return await statuses(private, before + during) == {"completed"}

            assert await wait_until(all_completed, within=120), worker.log()
        finally:
            worker.stop()
    finally:
        await asyncio.to_thread(broker.down)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_ingress_killed_between_commit_and_publish_still_runs_the_job_once(
    topics: Settings, make_client: ClientFactory, tmp_path: Path
) -> None:
    port = free_port()
    # This ingress can never publish: its relay has no broker. The job is committed only.
    doomed = IngressProcess(
        topics,
        tmp_path / "ingress.log",
        PIXSTREAM_KAFKA_BOOTSTRAP=NOBODY_LISTENS,
        PIXSTREAM_HTTP_PORT=str(port),
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                try:
                    async with session.get(f"{base}/v1/presets") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            assert await wait_until(answers, within=30), doomed.log()
            async with session.post(f"{base}/v1/jobs", data=job_form()) as resp:
                assert resp.status == 202, await resp.text()
                job = (await resp.json())["job_id"]
        assert [r["key"] for r in await fetch(topics, "SELECT key FROM outbox")] == [job]
    finally:
        doomed.kill()

    async with EventWatcher(topics).running() as watcher:
        await make_client(topics)  # another ingress: its relay publishes what the first left
        worker = WorkerProcess(topics, tmp_path / "worker.log").start()
        try:
            await watcher.wait_terminal([job], within=120)

            async def recorded() -> bool:
                return await statuses(topics, [job]) == {"completed"}

            assert await wait_until(recorded, within=20)
            await asyncio.sleep(2)  # room for a duplicate to show up
        finally:
            worker.stop()
        assert len({e.id for e in watcher.of_type(job, *TERMINAL)}) == 1
        assert len(watcher.of_type(job, *TERMINAL)) == 1
    assert await statuses(topics, [job]) == {"completed"}
