"""The Faust application: topics as declared in topics/, raw bytes on the wire (validated by
the pydantic event models, never `faust.Record`), and the agents wired to their handlers.

Every agent keeps Faust's default concurrency of 1: faust-streaming has lost in-flight
messages on rebalance with more (faust-streaming#606). A worker uses its cores through
more processes in the same consumer group (`pixstream worker --processes N`) and through
the Pillow thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import faust

from pixstream.ops import OPERATIONS
from pixstream.settings import Settings
from pixstream.topics import load_topics
from pixstream.worker.lag import LagMonitor
from pixstream.worker.notifier import Deliveries, notify
from pixstream.worker.planner import handle_job_request
from pixstream.worker.reconciler import Reconciler
from pixstream.worker.recorder import record_event
from pixstream.worker.records import NOT_BEFORE, ORIGIN_TOPIC, Record
from pixstream.worker.resources import Resources
from pixstream.worker.retry import TIERS
from pixstream.worker.steps import handle_task
from pixstream.worker.tracker import track

log = logging.getLogger(__name__)

Handler = Callable[[Record], Awaitable[None]]


def _record(event: Any) -> Record:
    message = event.message
    headers = message.headers or ()
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    return Record(
        message.topic, message.partition, message.offset, message.key, message.value, tuple(headers)
    )


def build_app(settings: Settings, ops: Sequence[str] | None = None) -> faust.App:
    """The worker's Faust app running the op agents of `ops` (all when None) and the
    planner, tracker, recorder, notifier and retry relays, and the webhook delivery loop."""
    partitions = {t.name: t.partitions for t in load_topics(settings)}
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # Tables live in memory and are rebuilt from their Kafka changelog on start.
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_partitions=partitions[settings.topic("events")],
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=1.0,
        # A worker that dies holds its partitions until its session times out: 10 s rather
        # than Faust's 60 s. Heartbeats run on the event loop, which Pillow never blocks.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    res = Resources(settings, loop=asyncio.get_event_loop())
    app.add_dependency(res)  # started before the agents, stopped after them

    subscribed: list[str] = []

    def topic(name: str) -> Any:
        subscribed.append(settings.topic(name))
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    def agent(name: str, source: Any, handle: Handler) -> None:
        async def consume(stream: Any) -> None:
            await res.ready()
            async for event in stream.events():
                await handle(_record(event))

        app.agent(source, name=name)(consume)

    agent("planner", topic("jobs"), res.working(lambda r: handle_job_request(res, r)))

    for op in sorted(ops if ops is not None else OPERATIONS):
        agent(f"op-{op}", topic(f"op.{op}"), res.working(lambda r, op=op: handle_task(res, r, op)))  # type: ignore[misc]

    jobs = app.Table(
        "jobs",
        default=None,
        partitions=partitions[settings.topic("events")],
        key_type=str,
        value_type=None,
    )
    events = topic("events")
    agent("tracker", events, lambda r: track(res, jobs, r, app.producer.flush))
    agent("recorder", events, lambda r: record_event(res, r))
    agent("notifier", events, lambda r: notify(res, r))
    # Sends the webhooks the notifier queued; added after `res`, so it stops before it.
    app.add_dependency(Deliveries(res, loop=res.loop))

    for tier in TIERS:
        agent(f"relay-{tier.name}", topic(tier.name), lambda r: relay(res, r))
    app.add_dependency(LagMonitor(settings, subscribed, loop=res.loop))
    app.add_dependency(Reconciler(res, loop=res.loop))
    return app


async def relay(res: Resources, record: Record) -> None:
    """Wait until a parked record is due, then send it back to the topic it came from."""
    due = float(record.header(NOT_BEFORE) or 0)
    if (wait := due - time.time()) > 0:
        await asyncio.sleep(wait)
    origin = record.header(ORIGIN_TOPIC)
    if origin is None:  # not ours to relay
        await res.dead_letter(record, ValueError("retry record without origin"), attempts=0)
        return
    await res.send(origin, record.value or b"", key=record.key_text, headers=record.headers)
