"""Every client the worker uses, opened in one place and closed in one place (a mode.Service
started before the agents), plus the few ways the agents write to Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from mode import Service

from pixstream import kafka, metrics, netguard
from pixstream.db import repository
from pixstream.db.failures import retry_in_place
from pixstream.events import CloudEvent
from pixstream.redelivery import Record, dead_letter_copy, parked_headers, tier_for, truncated
from pixstream.settings import Settings
from pixstream.storage import Storage, open_storage
from pixstream.worker.renderpool import RenderPool

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_MAX_SECONDS = 10.0
#: The producer's largest request (aiokafka's default); a bigger dead letter is cut to fit.
MAX_RECORD_BYTES = 1_048_576


class Resources(Service):
    """The worker's clients; agents `await ready()` before their first use."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._stack = AsyncExitStack()
        self._ready = asyncio.Event()
        self.producer: AIOKafkaProducer
        self.storage: Storage
        self.pool: asyncpg.Pool
        self.http: aiohttp.ClientSession
        self.renderer: RenderPool

    async def on_start(self) -> None:
        s = self.settings
        self.producer = await self._stack.enter_async_context(kafka.open_producer(s))
        self.storage = await self._stack.enter_async_context(open_storage(s))
        self.renderer = await self._stack.enter_async_context(RenderPool.from_settings(s))
        # min_size 0: a worker starts (and serves Kafka) while PostgreSQL restarts.
        self.pool = await asyncpg.create_pool(
            s.database_url.get_secret_value(),
            min_size=0,
            max_size=5,
            command_timeout=10,
            reset=repository.release_reset,
        )
        self._stack.push_async_callback(self.pool.close)
        self.http = netguard.guarded_session(
            allow_private=s.source_allow_private, timeout_seconds=s.source_fetch_timeout_seconds
        )
        self._stack.push_async_callback(self.http.close)
        self._ready.set()

    async def on_stop(self) -> None:
        await self._stack.aclose()

    async def ready(self) -> Resources:
        await self._ready.wait()
        return self

    @property
    def stopping(self) -> bool:
        return bool(self.should_stop)

    # -- writing to PostgreSQL ------------------------------------------------------------
    async def write_db(self, write: Callable[[Any], Awaitable[T]], *, what: str, job_id: str) -> T:
        """Run `write` on a connection, retrying in place while PostgreSQL is unavailable."""

        async def attempt() -> T:
            async with self.pool.acquire() as conn:
                return await write(conn)

        return await retry_in_place(
            attempt, what=what, stopping=lambda: self.stopping, extra={"job_id": job_id}
        )

    # -- writing to Kafka ---------------------------------------------------------------
    async def send(
        self, topic: str, value: bytes, *, key: str, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """A confirmed write, retried in place while the error is one Kafka calls retriable
        (the broker away, a leader moving, a timeout); any other KafkaError is raised."""
        delay = 0.5
        while True:
            try:
                await kafka.send(self.producer, topic, value, key=key, headers=headers)
                return
            except KafkaError as exc:
                if self.stopping or not kafka.retriable(exc):
                    raise
                log.warning("kafka send to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def emit(self, event: CloudEvent, *, key: str) -> None:
        """Publish a lifecycle event on `<prefix>.events`, keyed by job id."""
        await self.send(self.settings.topic("events"), event.to_bytes(), key=key)

    async def park(self, record: Record, error: BaseException) -> None:
        """Park a transiently failed record in a retry topic, or dead-letter it when the
        budget is spent."""
        attempt = record.attempt + 1
        if attempt > self.settings.retry_attempts:
            await self.dead_letter(record, error)
            return
        tier = tier_for(attempt)
        log.warning(
            "transient failure, retrying in %.0fs: %s",
            tier.delay_seconds,
            error,
            extra={"key": record.key_text, "topic": record.topic, "attempt": attempt},
        )
        metrics.RETRIES.labels(topic=record.topic).inc()
        await self.send(
            self.settings.topic(tier.name),
            record.value or b"",
            key=record.key_text,
            headers=parked_headers(record, attempt, time.time()),
        )

    async def dead_letter(self, record: Record, error: BaseException) -> None:
        """Move a record that cannot be processed to the DLQ, with its context in headers;
        one too large for the topic goes as a truncated copy pointing at the original."""
        letter = dead_letter_copy(record, error, record.attempt + 1)
        original = record.origin()
        log.error(
            "dead-lettering a record from %s: %s: %s",
            original.topic,
            type(error).__name__,
            error,
            extra={"key": record.key_text, "attempts": record.attempt + 1},
        )
        metrics.DEAD_LETTERS.labels(topic=original.topic, error=type(error).__name__).inc()
        topic = self.settings.topic("dlq")
        room = MAX_RECORD_BYTES
        copy = letter
        while True:
            try:
                await self.send(topic, copy.value, key=record.key_text, headers=copy.headers)
                return
            except MessageSizeTooLargeError:
                if not copy.value:
                    raise  # the headers alone do not fit: the DLQ must be fixed
                # The topic's limit may be below the producer's: shrink until it fits.
                copy = truncated(letter, room)
                room //= 4
                log.warning(
                    "dead letter of %d bytes cut to %d to fit %s",
                    len(letter.value),
                    len(copy.value),
                    topic,
                    extra={"key": record.key_text},
                )
