"""The deep health check shared by `GET /health` and `pixstream health`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from pixstream import kafka
from pixstream.settings import Settings
from pixstream.storage import open_storage

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    checks: dict[str, Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "checks": {n: {"ok": c.ok, "detail": c.detail} for n, c in self.checks.items()},
        }


async def _kafka(settings: Settings) -> str:
    brokers = await kafka.ping(settings)
    return f"{brokers} broker(s) at {settings.kafka_bootstrap}"


async def _postgres(settings: Settings) -> str:
    conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=TIMEOUT_SECONDS)
    try:
        await conn.fetchval("SELECT 1")
        return "SELECT 1 answered"
    finally:
        await conn.close()


async def _s3(settings: Settings) -> str:
    async with open_storage(settings) as storage:
        await storage.ping()
    return f"bucket {settings.s3_bucket} at {settings.s3_endpoint_url}"


async def run_check(probe: Callable[[], Awaitable[str]]) -> Check:
    """The probe's answer as a Check, within TIMEOUT_SECONDS; never raises."""
    try:
        return Check(True, await asyncio.wait_for(probe(), TIMEOUT_SECONDS))
    except Exception as exc:  # any failure is the answer, not a crash of the check
        return Check(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


async def check_all(settings: Settings) -> Report:
    names = ("kafka", "postgres", "s3")
    probes = (_kafka, _postgres, _s3)
    results = await asyncio.gather(*(run_check(lambda p=p: p(settings)) for p in probes))  # type: ignore[misc]
    return Report(dict(zip(names, results, strict=True)))
