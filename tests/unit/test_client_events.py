"""`Client.events` against a scripted event-stream endpoint on loopback: what it does when
the stream drops or ends early (the ingress side is tested end to end in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixstream import sse
from pixstream.client import Client
from pixstream.events import CloudEvent

Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def frame(event_id: str, event_type: str) -> bytes:
    event = CloudEvent(
        id=event_id, source="/test", type=event_type, time=datetime.now(UTC), data={"job_id": "j1"}
    )
    return sse.frame(event_id, event_type, event.model_dump_json())


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[Handler]], Coroutine[Any, Any, str]]]:
    """A server answering the n-th GET of the stream with the n-th handler; its base URL."""
    servers: list[TestServer] = []

    async def serve(script: list[Handler]) -> str:
        calls = iter(script)

        async def stream(request: web.Request) -> web.StreamResponse:
            return await next(calls)(request)

        app = web.Application()
        app.router.add_get("/v1/jobs/{job_id}/events", stream)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url(""))

    yield serve
    for server in servers:
        await server.close()


def sends(*frames: bytes, drop: bool = False) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": sse.CONTENT_TYPE})
        await resp.prepare(request)
        for raw in frames:
            await resp.write(raw)
        if drop:  # the connection breaks mid-stream
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    return handle


async def test_an_early_end_after_a_reconnect_does_not_end_a_retried_job(
    scripted: Callable[[list[Handler]], Coroutine[Any, Any, str]],
) -> None:
    # Run 1 failed and was retried. The stream breaks right after run 1's job.failed; the
    # reconnect is ended at once by a server shutting down; the next one has the retry.
    url = await scripted(
        [
            sends(frame("j1.job.failed", "pixstream.job.failed"), drop=True),
            sends(),
            sends(
                frame("j1.r1.job.retried", "pixstream.job.retried"),
                frame("j1.r1.job.completed", "pixstream.job.completed"),
            ),
        ]
    )
    async with Client(url) as client:
        ids = [event.id async for event in client.events("j1")]
    assert ids == ["j1.job.failed", "j1.r1.job.retried", "j1.r1.job.completed"]


async def test_a_stream_ended_at_a_terminal_event_is_not_reopened(
    scripted: Callable[[list[Handler]], Coroutine[Any, Any, str]],
) -> None:
    url = await scripted(  # a second GET would find no handler and fail the stream
        [
            sends(
                frame("j1.job.requested", "pixstream.job.requested"),
                frame("j1.job.completed", "pixstream.job.completed"),
            )
        ]
    )
    async with Client(url) as client:
        ids = [event.id async for event in client.events("j1")]
    assert ids == ["j1.job.requested", "j1.job.completed"]
