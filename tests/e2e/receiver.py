"""A webhook receiver bound to 127.0.0.1 for the end-to-end tests, and the worker settings
that let a pipeline deliver to it quickly."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

WEBHOOK_SETTINGS: dict[str, Any] = {
    "webhook_allow_private": True,  # the receivers are on loopback
    "webhook_retry_schedule": [0.3, 0.3, 0.3, 0.3],
    "webhook_breaker_fail_max": 3,
    "webhook_breaker_reset_seconds": 2.0,
    "webhook_poll_seconds": 0.2,
    "webhook_timeout_seconds": 2.0,
}


@dataclass(frozen=True)
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request and answers the queued
    statuses (then 200); it can go down and come back on the same port."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.statuses = deque(statuses)
        self.hits: list[Hit] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        status = self.statuses.popleft() if self.statuses else 200
        body = await request.read()
        self.hits.append(Hit(time.time(), dict(request.headers), body, status))
        return web.Response(status=status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def for_job(self, job_id: str) -> list[Hit]:
        return [h for h in self.hits if h.webhook_id.startswith(f"{job_id}.")]
