"""`/health` and the job gauges of `/metrics`, cheap enough to face any scraper.

Both reuse the ingress's own pool and S3 client (no fresh connections per call), and both are
computed at most once per `TTL_SECONDS` however many callers ask at once: the result is
shared, and so is a check in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from pixstream import kafka
from pixstream.db import repository
from pixstream.db.failures import translated
from pixstream.health import Report, run_check
from pixstream.metrics import JOBS
from pixstream.settings import Settings
from pixstream.storage import Storage

TTL_SECONDS: Final = 2.0

T = TypeVar("T")


class Shared(Generic[T]):
    """The result of `compute`, computed at most once per `ttl` seconds."""

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl: float = TTL_SECONDS) -> None:
        self._compute = compute
        self._ttl = ttl
        self._at = float("-inf")
        self._task: asyncio.Task[T] | None = None

    async def get(self) -> T:
        now = time.monotonic()
        if self._task is None or (self._task.done() and now - self._at >= self._ttl):
            self._at = now
            self._task = asyncio.ensure_future(self._compute())
        return await asyncio.shield(self._task)


class Status:
    def __init__(self, settings: Settings, pool: Any, storage: Storage) -> None:
        self._settings = settings
        self._pool = pool
        self._storage = storage
        self._report = Shared(self._check)
        self._counts = Shared(self._count_jobs)

    async def report(self) -> Report:
        return await self._report.get()

    async def refresh_job_counts(self) -> None:
        for status, n in (await self._counts.get()).items():
            JOBS.labels(status).set(n)

    async def _check(self) -> Report:
        names = ("kafka", "postgres", "s3")
        probes = (self._kafka, self._postgres, self._s3)
        results = await asyncio.gather(*(run_check(p) for p in probes))
        return Report(dict(zip(names, results, strict=True)))

    async def _kafka(self) -> str:
        brokers = await kafka.ping(self._settings)
        return f"{brokers} broker(s) at {self._settings.kafka_bootstrap}"

    async def _postgres(self) -> str:
        async with self._pool.acquire(timeout=5.0) as conn:
            await conn.fetchval("SELECT 1")
        return "SELECT 1 answered"

    async def _s3(self) -> str:
        await self._storage.ping()
        return f"bucket {self._settings.s3_bucket} at {self._settings.s3_endpoint_url}"

    async def _count_jobs(self) -> dict[str, int]:
        async with translated(), self._pool.acquire(timeout=5.0) as conn:
            return await repository.count_jobs_by_status(conn)
