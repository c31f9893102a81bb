"""The ingress application: `create_app(settings)` wires the clients, middlewares and routes.

Each client (PostgreSQL pool, S3, the outbox relay and its Kafka producer) is opened and
closed by one `cleanup_ctx` entry, so whatever opened is closed even when a later one fails
to start. The ingress needs PostgreSQL and S3 to accept a job, not Kafka: the relay catches
up once the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from pixstream import asyncapi
from pixstream.db.repository import open_pool
from pixstream.ingress import progress
from pixstream.ingress.admission import UPLOAD_SLOTS, UploadSlots, upload_slots_middleware
from pixstream.ingress.auth import auth_middleware
from pixstream.ingress.keys import HEALTH, LIMITER, POOL, RELAY, SETTINGS, STORAGE
from pixstream.ingress.problems import NotFound, problem_middleware
from pixstream.ingress.ratelimit import RateLimiter
from pixstream.ingress.relay import OutboxRelay
from pixstream.ingress.routes import setup_routes
from pixstream.ingress.status import Status
from pixstream.ingress.upload import max_request_bytes
from pixstream.metrics import HTTP_REQUESTS, HTTP_SECONDS
from pixstream.settings import Settings
from pixstream.storage import open_storage

#: What the admin listener (PIXSTREAM_ADMIN_PORT) serves, and only it when there is one.
ADMIN_PATHS = frozenset({"/metrics", "/health"})


def create_app(settings: Settings) -> web.Application:
    """The ingress: its API, page and documents, and /metrics and /health unless those have
    a listener of their own (`admin_port`)."""
    app = web.Application(
        middlewares=[
            metrics_middleware,
            problem_middleware,
            admin_split_middleware,
            auth_middleware,
            upload_slots_middleware,
        ],
        # Uploads are streamed by the handler, which enforces the exact limit; this caps
        # every other way of reading a body at the same size.
        client_max_size=max_request_bytes(settings.max_upload_bytes),
    )
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.rate_limit_per_minute)
    app[UPLOAD_SLOTS] = UploadSlots(settings.max_uploads_in_flight)
    app.cleanup_ctx.extend([_database, _storage, _relay, _status])
    setup_routes(app)
    progress.setup(app)
    app.router.add_get("/asyncapi.json", get_asyncapi, name="asyncapi")
    return app


async def get_asyncapi(request: web.Request) -> web.Response:
    """The AsyncAPI document of the Kafka interface, naming this deployment's topics."""
    return web.json_response(asyncapi.document(request.app[SETTINGS].topic_prefix))


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with open_pool(app[SETTINGS].database_url.get_secret_value()) as pool:
        app[POOL] = pool
        yield


async def _storage(app: web.Application) -> AsyncIterator[None]:
    async with open_storage(app[SETTINGS]) as storage:
        app[STORAGE] = storage
        yield


async def _relay(app: web.Application) -> AsyncIterator[None]:
    relay = OutboxRelay(app[POOL], app[SETTINGS])
    app[RELAY] = relay
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.drain()  # what the last requests committed goes out now, not at next start


async def _status(app: web.Application) -> AsyncIterator[None]:
    app[HEALTH] = Status(app[SETTINGS], app[POOL], app[STORAGE])
    yield


@web.middleware
async def admin_split_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an admin port, /metrics and /health answer there only, and nothing else does."""
    admin_port = request.app[SETTINGS].admin_port
    if admin_port:
        transport = request.transport
        sockname: Any = transport.get_extra_info("sockname") if transport is not None else None
        on_admin = isinstance(sockname, tuple) and sockname[1] == admin_port
        if on_admin != (request.path in ADMIN_PATHS):
            raise NotFound(f"no resource at {request.path}")
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template (bounded label values)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # what the problem middleware let through (< 400)
        status = exc.status
        raise
    finally:
        HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
