"""Consumer lag as /metrics reports it, measured on the real broker."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from pixstream import kafka
from pixstream.settings import Settings
from pixstream.worker.lag import group_lag

pytestmark = pytest.mark.kafka


async def test_group_lag_counts_what_the_group_has_not_committed(topics: Settings) -> None:
    topic = topics.topic("dlq")  # one partition: offsets are easy to reason about
    async with kafka.open_producer(topics) as producer:
        for i in range(7):
            await kafka.send(producer, topic, b"x", key=f"k{i}")
    group = topics.app_id
    committer = AIOKafkaConsumer(
        bootstrap_servers=topics.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "")})
    finally:
        await committer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=topics.kafka_bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=topics.kafka_bootstrap)
    await admin.start()
    await reader.start()
    try:
        assert await group_lag(admin, reader, group, [topic]) == {topic: 4}
        assert await group_lag(admin, reader, group, ["other"]) == {}
    finally:
        await reader.stop()
        await admin.close()
