"""GET /v1/jobs/{id}/events: a job's lifecycle events as server-sent events.

The stream is read from the job's event log in PostgreSQL (`db.job_events`), never from a
buffer: a subscriber replays what already happened, then reads again from its cursor each
time the process's one listener (`db.notifications`) says the job's log grew, and at each
keepalive. So arriving late, reconnecting with Last-Event-ID or missing a notification all
cost nothing, and a slow client holds one page of rows at most. The frames come from
`pixstream.sse` rather than a library's response class: the loop must own its timer to
re-read on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from pixstream import sse
from pixstream.db import job_events
from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.db.notifications import Full, JobNotifications, Subscription
from pixstream.db.repository import TERMINAL
from pixstream.ingress.keys import POOL, SETTINGS
from pixstream.ingress.routes import DB_ACQUIRE_TIMEOUT, find_job

log = logging.getLogger(__name__)

NOTIFICATIONS = web.AppKey("job_notifications", JobNotifications)
#: Sent with a 503 when every subscriber slot is taken.
BUSY_RETRY_AFTER: Final = 5
#: What an EventSource waits before reconnecting on its own (milliseconds).
RECONNECT_MS: Final = 2000
GONE_CHECK_SECONDS: Final = 1.0


async def get_job_events(request: web.Request) -> web.StreamResponse:
    job = await find_job(request)  # 404 exactly as GET /v1/jobs/{id}
    app = request.app
    try:
        with app[NOTIFICATIONS].subscribe(job.job_id) as sub:
            return await _stream(request, sub, finished=job.status in TERMINAL)
    except Full as exc:
        raise web.HTTPServiceUnavailable(
            headers={"Retry-After": str(BUSY_RETRY_AFTER)}, text=f"{exc}; retry shortly"
        ) from None


async def _stream(request: web.Request, sub: Subscription, *, finished: bool) -> web.StreamResponse:
    """Replay, then follow until the terminal event. `finished`: the job's record was already
    terminal (read before the log, so its terminal event, written in the same transaction,
    is in the replay); a job recorded before the log existed then ends with its replay."""
    cursor, done = await _start(request, sub.job_id)
    resp = web.StreamResponse(
        headers={
            "Content-Type": sse.CONTENT_TYPE,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies such as nginx would hold the stream back
        }
    )
    await resp.prepare(request)
    try:
        await _follow(request, resp, sub, cursor, done=done, finished=finished)
        await resp.write_eof()
    except ConnectionResetError:  # the client went away: nothing to finish
        pass
    return resp


async def _follow(
    request: web.Request,
    resp: web.StreamResponse,
    sub: Subscription,
    cursor: int,
    *,
    done: bool,
    finished: bool,
) -> None:
    keepalive = request.app[SETTINGS].sse_keepalive_seconds
    await resp.write(sse.retry(RECONNECT_MS))
    last_write = time.monotonic()
    first = True
    unsettled: job_events.StoredEvent | None = None  # a terminal event not yet asked about
    while not done and not sub.closed:
        try:
            if unsettled is not None and await _ends(request, sub.job_id, unsettled):
                break
            unsettled = None
            async for event in _read(request, sub.job_id, cursor):
                await resp.write(sse.frame(event.event_id, event.type, event.json))
                last_write = time.monotonic()
                cursor = event.seq
                if event.terminal:
                    unsettled = event  # asked again next turn should PostgreSQL fail now
                    if await _ends(request, sub.job_id, event):
                        done = True
                        break
                    unsettled = None
        except DatabaseUnavailable as exc:  # the stream stays; the next wake-up reads again
            log.warning("events of %s: %s", sub.job_id, exc, extra={"job_id": sub.job_id})
        if done or (first and finished):
            break
        first = False
        silent = time.monotonic() - last_write
        if silent >= keepalive or not await _quiet(request, sub, keepalive - silent):
            await resp.write(sse.comment("keepalive"))
            last_write = time.monotonic()


async def _quiet(request: web.Request, sub: Subscription, seconds: float) -> bool:
    """Wait up to `seconds` for a wake-up (True), noticing within a second a client that
    left: aiohttp tells a handler only when it writes, and a slot is held until then."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await sub.wait(min(left, GONE_CHECK_SECONDS)):
            return True
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client closed the stream")
    return False


async def _ends(request: web.Request, job_id: str, event: job_events.StoredEvent) -> bool:
    """The stream ends at this terminal event unless a retry follows it (a new run)."""
    async with translated(), request.app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        return await job_events.ends_stream(conn, job_id, event)


async def _start(request: web.Request, job_id: str) -> tuple[int, bool]:
    """The cursor to read after (Last-Event-ID's position; 0, a full replay, for an id the
    job does not have), and whether that event already ended the stream."""
    last = request.headers.get("Last-Event-ID", "").strip()
    if not last:
        return 0, False
    async with translated(), request.app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        event = await job_events.find(conn, job_id, last)
        if event is None:
            return 0, False
        return event.seq, await job_events.ends_stream(conn, job_id, event)


async def _read(
    request: web.Request, job_id: str, cursor: int
) -> AsyncIterator[job_events.StoredEvent]:
    """The job's events after `cursor`, a page at a time (the connection is not held while
    the client is written to)."""
    while True:
        async with translated(), request.app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
            page = await job_events.read_after(conn, job_id, cursor)
        for event in page:
            yield event
            cursor = event.seq
        if len(page) < job_events.PAGE:
            return


async def _notifications(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    notifications = JobNotifications(
        settings.database_url.get_secret_value(), settings.max_event_subscribers
    )
    async with notifications.running():
        app[NOTIFICATIONS] = notifications
        yield


async def _close_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open requests: ending the streams here is
    # what lets the server stop now instead of at its shutdown timeout.
    app[NOTIFICATIONS].close_all()


def setup(app: web.Application) -> None:
    """Add the events route, its listener and its shutdown hook to the ingress."""
    app.cleanup_ctx.append(_notifications)
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/v1/jobs/{job_id}/events", get_job_events, name="job_events")
