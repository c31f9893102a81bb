"""One LISTEN connection per process that wakes whoever follows a job when its event log grows.

Subscribers of a job share nothing but a flag per subscriber: a notification sets it, and the
subscriber then reads the log from its own cursor. So a burst of notifications costs one
read, a slow subscriber holds no buffer, and a notification lost while the connection was
down costs nothing: every subscriber is woken after a reconnect (and re-reads on its own
timer anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import asyncpg

from pixstream.db.failures import is_transient
from pixstream.db.job_events import CHANNEL

log = logging.getLogger(__name__)

RECONNECT_FIRST_SECONDS: Final = 0.5
RECONNECT_MAX_SECONDS: Final = 10.0


class Full(Exception):
    """As many subscribers as allowed are following jobs already."""


class Subscription:
    """One follower of one job: woken when the job's log may have grown, or closed."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.closed = False
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self.closed = True
        self._woken.set()

    async def wait(self, within: float) -> bool:
        """Wait up to `within` seconds; True when woken (or closed) meanwhile."""
        try:
            await asyncio.wait_for(self._woken.wait(), within)
        except TimeoutError:
            return False
        self._woken.clear()
        return True


class JobNotifications:
    """The process's listener on `job_events.CHANNEL`, shared by at most `limit` subscribers."""

    def __init__(self, dsn: str, limit: int) -> None:
        self.dsn = dsn
        self.limit = limit
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    @property
    def subscribers(self) -> int:
        return self._count

    @asynccontextmanager
    async def running(self) -> AsyncIterator[JobNotifications]:
        """Listen (reconnecting as needed) inside the block; every subscriber is closed on
        exit, so streams end instead of holding the server's shutdown."""
        self._task = asyncio.create_task(self._listen(), name="job-notifications")
        try:
            yield self
        finally:
            self.close_all()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        """Follow `job_id` inside the block; Full when `limit` subscribers already do."""
        if self._count >= self.limit:
            raise Full(f"{self.limit} event streams are already open")
        sub = Subscription(job_id)
        self._subs[job_id].add(sub)
        self._count += 1
        try:
            yield sub
        finally:
            self._count -= 1
            subs = self._subs[job_id]
            subs.discard(sub)
            if not subs:
                del self._subs[job_id]

    def close_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.close()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.wake()

    def _notified(self, conn: Any, pid: int, channel: str, job_id: str) -> None:
        for sub in self._subs.get(job_id, ()):
            sub.wake()

    async def _listen(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.dsn)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("listening for job events: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                delay = RECONNECT_FIRST_SECONDS
                self.listening.set()
                self._wake_all()  # what was notified while nobody listened
                await lost.wait()
                log.warning("the job events listener lost PostgreSQL; reconnecting")
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("listening for job events: %s; reconnecting", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
