"""What the reconciler reads as waiting, on the real broker: a partition the group has not
handled to its end, and nothing for a declared topic the broker does not have yet (a topic
added to topics/ before `pixstream topics apply` ran: its offsets cannot be read)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from pixstream import kafka
from pixstream.settings import Settings
from pixstream.worker.reconciler import partition_for, read_backlog

pytestmark = pytest.mark.kafka


async def test_a_declared_topic_missing_on_the_broker_holds_nothing(topics: Settings) -> None:
    jobs, missing = topics.topic("jobs"), topics.topic("jobs.not-applied")
    async with kafka.open_producer(topics) as producer:
        await kafka.send(producer, jobs, b"request", key="j1")
    admin = AIOKafkaAdminClient(bootstrap_servers=topics.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=topics.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        counts = {jobs: 4, missing: 4}
        # Well within the 40 s an offset request for a missing topic waits before it fails.
        backlog = await asyncio.wait_for(
            read_backlog(admin, consumer, topics.app_id, counts, []), 20
        )
    finally:
        await consumer.stop()
        await admin.close()
    assert backlog.unfinished == {(jobs, partition_for("j1", 4))}
    assert backlog.holds("j1")
