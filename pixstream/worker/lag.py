"""Consumer lag of the worker's group per topic, for `pixstream_consumer_lag` in /metrics:
how many messages each topic holds that the group has not consumed yet."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service

from pixstream import metrics
from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE
from pixstream.topics import lane_of

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 15.0


async def group_lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str, topics: Sequence[str]
) -> dict[str, int]:
    """Messages behind the group's committed offsets, summed per topic."""
    committed = await admin.list_consumer_group_offsets(group)
    partitions = [tp for tp in committed if tp.topic in topics]
    if not partitions:
        return {}
    ends = await consumer.end_offsets(partitions)
    lag: dict[str, int] = defaultdict(int)
    for tp in partitions:
        lag[tp.topic] += max(0, ends[tp] - committed[tp].offset)
    return dict(lag)


def lane_lag(lag: dict[str, int], topics: Sequence[str], prefix: str) -> dict[str, int]:
    """The laned topics' lag summed per lane: `interactive` (the jobs topic and the op
    topics) and `batch` (`jobs.batch` and the op topics' batch topics). `topics` are full
    names under `prefix`."""
    lanes = {INTERACTIVE: 0, BATCH: 0}
    for topic in topics:
        if (lane := lane_of(topic.removeprefix(f"{prefix}."))) is not None:
            lanes[lane] += lag.get(topic, 0)
    return lanes


class LagMonitor(Service):
    """Refreshes the lag gauge every INTERVAL_SECONDS while the worker runs."""

    def __init__(self, settings: Settings, topics: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.topics = list(topics)

    @Service.task
    async def _refresh(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await admin.start()
        await consumer.start()
        try:
            while not self.should_stop:
                try:
                    lag = await group_lag(admin, consumer, self.settings.app_id, self.topics)
                    for topic in self.topics:
                        metrics.CONSUMER_LAG.labels(topic=topic).set(lag.get(topic, 0))
                    prefix = self.settings.topic_prefix
                    for lane, total in lane_lag(lag, self.topics, prefix).items():
                        metrics.LANE_LAG.labels(lane=lane).set(total)
                except KafkaError as exc:
                    log.warning("consumer lag not measured: %s", exc)
                await self.sleep(INTERVAL_SECONDS)
        finally:
            await consumer.stop()
            await admin.close()
