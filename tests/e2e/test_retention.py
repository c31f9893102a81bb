"""A group commit the broker's retention has passed: the worker goes on from the log start,
counts what was lost, and does not read the partition again and again.

Before, the commit ledger started at the deleted offset, saw the fetcher (reset to the log
start) pass it, took it for a dropped message and sought back to it every few seconds: each
time the broker answered out of range, the fetcher reset to the log start, and everything
from there was handled again."""

from __future__ import annotations

import asyncio
import re
import socket

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from pixstream.settings import Settings
from pixstream.worker.commits import REREAD_AFTER_SECONDS, REREAD_CHECK_SECONDS
from tests.e2e.conftest import running_pipeline
from tests.harness import submit

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

#: Records per partition before the log start, and the group's commit among them.
DELETED, COMMITTED = 3, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _commit_below_the_log_start(settings: Settings) -> None:
    """On every partition of the jobs topic: DELETED records, the worker's group committed at
    COMMITTED, then the records deleted (as retention would)."""
    topic = settings.topic("jobs")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
        for tp in tps:
            for _ in range(DELETED):
                await producer.send_and_wait(topic, b"expired", partition=tp.partition)
    finally:
        await producer.stop()
    group = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,  # Faust's consumer group is the app id
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign(tps)
        await group.commit({tp: COMMITTED for tp in tps})
    finally:
        await group.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=DELETED) for tp in tps})
    finally:
        await admin.close()


async def _counter(port: int, name: str, topic: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    pattern = rf'^{name}\{{[^}}]*topic="{re.escape(topic)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


async def test_a_commit_past_retention_goes_on_from_the_log_start_once(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = _free_port()
    async with running_pipeline(
        services,
        template_database,
        tmp_path_factory.mktemp("retention"),
        extra_env={"PIXSTREAM_WORKER_METRICS_PORT": str(port)},
        before_start=_commit_below_the_log_start,
    ) as pipeline:
        settings = pipeline.settings
        topic = settings.topic("jobs")
        partitions = len(await _partitions(settings, topic))
        # The start-up probe went through; a job on every partition goes through too.
        jobs = [await submit(settings) for _ in range(2 * partitions)]
        await pipeline.watcher.wait_terminal(jobs)
        # Long enough for the old ledger to take the deleted offset for a hole, twice.
        await asyncio.sleep(2 * (REREAD_AFTER_SECONDS + REREAD_CHECK_SECONDS))
        assert await _counter(port, "pixstream_rereads_total", topic) == 0
        lost = await _counter(port, "pixstream_expired_unhandled_total", topic)
        assert lost == (DELETED - COMMITTED) * partitions


async def _partitions(settings: Settings, topic: str) -> set[int]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()
