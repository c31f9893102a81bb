"""Kafka clients (aiokafka) configured the one way PixStream uses them.

Producers are idempotent (`enable_idempotence=True`, acks=all) so a retried send never
writes a message twice; at-least-once delivery plus idempotent effects downstream is the
whole delivery story (see docs/design.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, KafkaTimeoutError

from pixstream.settings import Settings

Header = tuple[str, bytes]


def new_producer(settings: Settings, *, request_timeout_ms: int = 15_000) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        # No linger: every send in the pipeline is awaited before the next hop, so a linger
        # would be paid once per hop (about ten per job) and batch nothing. Under load the
        # sender still batches what gathers while the previous request is in flight.
        linger_ms=0,
        request_timeout_ms=request_timeout_ms,
        client_id=f"{settings.app_id}-producer",
    )


@asynccontextmanager
async def open_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = new_producer(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def open_consumer(
    settings: Settings, *topics: str, group_id: str | None, from_beginning: bool = True
) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes,
    *,
    key: str,
    headers: Sequence[Header] = (),
) -> None:
    """Send and wait for the broker's acknowledgement (a confirmed write, not a queued one)."""
    await producer.send_and_wait(topic, value, key=key.encode(), headers=list(headers))


async def ping(settings: Settings, timeout_ms: int = 3_000) -> int:
    """Fetch cluster metadata; return the number of brokers that answered."""
    client = AIOKafkaClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=timeout_ms
    )
    await client.bootstrap()
    try:
        return len(client.cluster.brokers())
    finally:
        await client.close()


def retriable(exc: BaseException) -> bool:
    """Whether a failed Kafka request may succeed if sent again (the broker away, a leader
    moving, a timeout), as aiokafka classifies its errors; a record too large, a topic that
    does not exist or an authorisation failure will not. A batch that timed out
    (KafkaTimeoutError, which aiokafka does not mark retriable) is sent again: the broker being
    away is exactly that, and a duplicate is harmless downstream."""
    if isinstance(exc, KafkaTimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
