"""Every client the worker uses, opened in one place and closed in one place (a mode.Service
started before the agents), plus the few ways the agents write to Kafka."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from mode import Service

from pixstream import kafka, metrics, netguard
from pixstream.events import CloudEvent
from pixstream.settings import Settings
from pixstream.storage import Storage, open_storage
from pixstream.worker.records import Record, dead_letter_headers, with_headers
from pixstream.worker.retry import tier_for

log = logging.getLogger(__name__)
T = TypeVar("T")

# Kafka or PostgreSQL being down cannot be parked anywhere: handlers wait for them, since
# returning would let Faust acknowledge (and so lose) the message being handled.
BACKOFF_MAX_SECONDS = 10.0
DB_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


class Resources(Service):
    """The worker's clients; agents `await ready()` before their first use."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._stack = AsyncExitStack()
        self._ready = asyncio.Event()
        self._last_work = time.monotonic()
        self.producer: AIOKafkaProducer
        self.storage: Storage
        self.pool: asyncpg.Pool
        self.http: aiohttp.ClientSession
        self.executor = ThreadPoolExecutor(
            max_workers=settings.worker_threads or os.cpu_count() or 1,
            thread_name_prefix="pixstream-pillow",
        )

    async def on_start(self) -> None:
        s = self.settings
        self.producer = await self._stack.enter_async_context(kafka.open_producer(s))
        self.storage = await self._stack.enter_async_context(open_storage(s))
        self.pool = await asyncpg.create_pool(
            s.database_url.get_secret_value(), min_size=1, max_size=5
        )
        self._stack.push_async_callback(self.pool.close)
        self.http = netguard.guarded_session(
            allow_private=s.source_allow_private, timeout_seconds=s.source_fetch_timeout_seconds
        )
        self._stack.push_async_callback(self.http.close)
        self._ready.set()

    async def on_stop(self) -> None:
        await self._stack.aclose()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def ready(self) -> Resources:
        await self._ready.wait()
        return self

    # -- activity, for the reconciler -----------------------------------------------------
    def working(
        self, handle: Callable[[Record], Awaitable[None]]
    ) -> Callable[[Record], Awaitable[None]]:
        """`handle`, noting when this process last had planning or rendering to do."""

        async def noted(record: Record) -> None:
            self._last_work = time.monotonic()
            try:
                await handle(record)
            finally:
                self._last_work = time.monotonic()

        return noted

    def idle_seconds(self) -> float:
        return time.monotonic() - self._last_work

    # -- CPU work ---------------------------------------------------------------------
    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run Pillow work off the event loop (Pillow releases the GIL in its codecs)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- writing to PostgreSQL ------------------------------------------------------------
    async def write_db(
        self, write: Callable[[Any], Awaitable[None]], *, what: str, job_id: str
    ) -> None:
        """Run `write` on a connection, retrying in place while PostgreSQL is down."""
        delay = 0.5
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await write(conn)
                return
            except DB_DOWN as exc:
                if self.should_stop:
                    raise
                log.warning(
                    "%s failed (%s); retrying in %.1fs", what, exc, delay, extra={"job_id": job_id}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    # -- writing to Kafka ---------------------------------------------------------------
    async def send(
        self, topic: str, value: bytes, *, key: str, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """A confirmed write; retried until Kafka takes it or the worker stops."""
        delay = 0.5
        while True:
            try:
                await kafka.send(self.producer, topic, value, key=key, headers=headers)
                return
            except KafkaError as exc:
                if self.should_stop:
                    raise
                log.warning("kafka send to %s failed (%s); retrying in %.1fs", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def emit(self, event: CloudEvent, *, key: str) -> None:
        """Publish a lifecycle event on `<prefix>.events`, keyed by job id."""
        await self.send(self.settings.topic("events"), event.to_bytes(), key=key)

    async def retry_later(self, record: Record, error: BaseException) -> None:
        """Park a transiently failed record in a retry topic, or dead-letter it when the
        budget is spent."""
        attempt = record.attempt + 1
        if attempt > self.settings.retry_attempts:
            await self.dead_letter(record, error, attempts=attempt)
            return
        tier = tier_for(attempt)
        origin = record.origin()
        headers = with_headers(
            record.headers,
            pixstream_attempt=str(attempt),
            pixstream_origin_topic=origin.topic,
            pixstream_origin_partition=str(origin.partition),
            pixstream_origin_offset=str(origin.offset),
            # Wall-clock, not loop time: another process's relay reads it.
            pixstream_not_before=f"{time.time() + tier.delay_seconds:.3f}",
        )
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
            headers=headers,
        )

    async def dead_letter(self, record: Record, error: BaseException, *, attempts: int) -> None:
        """Move a record that cannot be processed to the DLQ, with its context in headers."""
        original = record.origin()
        log.error(
            "dead-lettering a record from %s: %s: %s",
            original.topic,
            type(error).__name__,
            error,
            extra={"key": record.key_text, "attempts": attempts},
        )
        metrics.DEAD_LETTERS.labels(topic=original.topic, error=type(error).__name__).inc()
        await self.send(
            self.settings.topic("dlq"),
            record.value or b"",
            key=record.key_text,
            headers=dead_letter_headers(original, error, attempts),
        )
