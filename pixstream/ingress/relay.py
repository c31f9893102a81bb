"""The outbox relay: publishes what the ingress committed to `outbox`, then deletes it.

Each commit hands it the message (written under this process's lease, `db/outbox.py`), so a
job is on Kafka a few milliseconds after its 202 at the cost of one round trip to PostgreSQL,
the delete. Every second it also claims the rows nobody handed it: Kafka was away (a message
it could not publish is given back at once), or another ingress process died between its
commit and its publish (its rows are taken once their lease has run out). It owns its
producer and starts it lazily, so the ingress accepts jobs while the broker is down and the
relay catches up when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from pixstream import kafka, metrics
from pixstream.db import outbox
from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 1.0
BATCH: Final = 200
BACKOFF_SECONDS: Final = (0.5, 1.0, 2.0, 5.0)
#: How long a stopping ingress keeps publishing what it committed.
DRAIN_SECONDS: Final = 5.0


class OutboxRelay:
    def __init__(self, pool: Any, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._wake = asyncio.Event()
        self._handed: list[outbox.Message] = []
        self._next_poll = 0.0
        self._producer: AIOKafkaProducer | None = None
        self._failures = 0

    def hand(self, message: outbox.Message) -> None:
        """`message` was committed by this process: publish it now, without claiming it."""
        self._handed.append(message)
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; never raises for Kafka or PostgreSQL being away."""
        try:
            while True:
                try:
                    published = await self.publish_once()
                except Exception as exc:  # the broker or the database away: back off
                    delay = BACKOFF_SECONDS[min(self._failures, len(BACKOFF_SECONDS) - 1)]
                    self._failures += 1
                    log.warning("outbox relay: %s; retrying in %.1fs", _describe(exc), delay)
                    await asyncio.sleep(delay)
                    continue
                self._failures = 0
                if published < BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                    self._wake.clear()
        finally:
            await self._stop_producer()

    async def drain(self) -> None:
        """One last round before the ingress stops (best effort: what stays is published by
        the next relay to run)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publish_once(), DRAIN_SECONDS)
        await self._stop_producer()

    async def publish_once(self) -> int:
        """Publish what was handed over and, once a second, the due rows of the table; the
        number published."""
        messages = await self._take()
        if not messages:
            return 0
        try:
            producer = await self._started_producer()
        except BaseException:
            with contextlib.suppress(Exception):  # else they wait for their lease to end
                await self._settle([], [m.id for m in messages])
            raise
        try:
            results = await asyncio.gather(
                *(kafka.send(producer, m.topic, m.value, key=m.key) for m in messages),
                return_exceptions=True,
            )
            sent = [m.id for m, r in zip(messages, results, strict=True) if r is None]
            failed = [m.id for m, r in zip(messages, results, strict=True) if r is not None]
            await self._settle(sent, failed)
        except asyncio.CancelledError:
            # The ingress is stopping: `drain` sends them again (a repeat is harmless
            # downstream) rather than leave their rows leased to a process about to exit.
            self._handed[:0] = messages
            raise
        metrics.OUTBOX_PUBLISHED.inc(len(sent))
        if failed:
            first = next(r for r in results if r is not None)
            raise RuntimeError(f"{len(failed)} of {len(messages)} not acknowledged: {first!r}")
        return len(sent)

    async def _take(self) -> list[outbox.Message]:
        """The messages handed over, and the table's due rows when a poll is due."""
        messages, self._handed = self._handed, []
        if messages and time.monotonic() < self._next_poll:
            return messages
        self._next_poll = time.monotonic() + POLL_SECONDS
        try:
            async with translated(), self._pool.acquire(timeout=5.0) as conn:
                claimed = await outbox.claim(conn, BATCH, outbox.LEASE_SECONDS)
                pending, lag = await outbox.backlog(conn)
        except BaseException:
            self._handed[:0] = messages  # PostgreSQL away: published at the next round
            raise
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_LAG_SECONDS.set(lag)
        handed = {m.id for m in messages}
        return messages + [m for m in claimed if m.id not in handed]

    async def _settle(self, sent: list[int], failed: list[int]) -> None:
        """Delete what the broker acknowledged; give the rest back to the next poll."""
        if not sent and not failed:
            return
        async with translated(), self._pool.acquire(timeout=5.0) as conn:
            if sent:
                await outbox.published(conn, sent)
            if failed:
                await outbox.release(conn, failed)

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = kafka.new_producer(self._settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DatabaseUnavailable):
        return f"PostgreSQL unavailable ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
