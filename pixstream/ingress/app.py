"""The ingress application: `create_app(settings)` wires the clients, middlewares and routes.

Each client (PostgreSQL pool, S3, Kafka producer) is opened and closed by one `cleanup_ctx`
entry, so whatever opened is closed even when a later one fails to start.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler
from aiokafka import AIOKafkaProducer

from pixstream import asyncapi
from pixstream.db.repository import open_pool
from pixstream.ingress import progress
from pixstream.ingress.admission import UPLOAD_SLOTS, UploadSlots, upload_slots_middleware
from pixstream.ingress.keys import KAFKA_TIMEOUT, LIMITER, POOL, PRODUCER, SETTINGS, STORAGE
from pixstream.ingress.problems import problem_middleware
from pixstream.ingress.ratelimit import RateLimiter
from pixstream.ingress.routes import setup_routes
from pixstream.ingress.upload import max_request_bytes
from pixstream.metrics import HTTP_REQUESTS, HTTP_SECONDS
from pixstream.settings import Settings
from pixstream.storage import open_storage

DEFAULT_KAFKA_TIMEOUT = 10.0


def create_app(
    settings: Settings, *, kafka_timeout: float = DEFAULT_KAFKA_TIMEOUT
) -> web.Application:
    """The ingress; `kafka_timeout` bounds the wait for the broker before a 503."""
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware, upload_slots_middleware],
        # Uploads are streamed by the handler, which enforces the exact limit; this caps
        # every other way of reading a body at the same size.
        client_max_size=max_request_bytes(settings.max_upload_bytes),
    )
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.rate_limit_per_minute)
    app[UPLOAD_SLOTS] = UploadSlots(settings.max_uploads_in_flight)
    app[KAFKA_TIMEOUT] = kafka_timeout
    app.cleanup_ctx.extend([_database, _storage, _producer])
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


async def _producer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Not kafka.open_producer: an idempotent producer never expires a batch, so a send that
    # timed out while the broker was down would still be delivered once it is back, for a job
    # the client was told was refused. Without idempotence the batch fails at
    # request_timeout_ms instead; a duplicate job.requested (same job id) is harmless
    # downstream, a late one is not.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=int(app[KAFKA_TIMEOUT] * 1000),
        client_id=f"{settings.app_id}-ingress",
    )
    await producer.start()
    app[PRODUCER] = producer
    try:
        yield
    finally:
        await producer.stop()


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
