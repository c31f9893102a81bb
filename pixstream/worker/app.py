"""The Faust application: topics as declared in topics/, raw bytes on the wire (validated by
the pydantic event models, never `faust.Record`), and one agent per topic, each a `Route`
delivered by `handling.deliver`.

Offsets are committed by `commits.LedgerConsumer`: only past messages a route finished. That
is also what makes several tasks in flight per op agent safe (`worker_concurrency`): they may
finish out of order, and the commit still never passes an unfinished one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import faust

from pixstream.events import LIFECYCLE_TYPES
from pixstream.ops import OPERATIONS
from pixstream.redelivery import ORIGIN_TOPIC, TIERS, Record
from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE
from pixstream.topics import TRACKER_TABLE, jobs_topic, lane_topics, load_topics, op_topic
from pixstream.worker import planner, steps
from pixstream.worker.commits import LedgerConsumer, LedgerTransport
from pixstream.worker.handling import Message, Route, deliver
from pixstream.worker.jobtable import JobTable
from pixstream.worker.lag import LagMonitor
from pixstream.worker.lanes import GiveWay, Lanes
from pixstream.worker.notifier import Deliveries, notify
from pixstream.worker.pruning import Pruner, TablePruner
from pixstream.worker.reconciler import Reconciler
from pixstream.worker.recorder import NotRecorded, Recorder
from pixstream.worker.recovery import WorkerTableManager
from pixstream.worker.resources import Resources
from pixstream.worker.tracker import track

log = logging.getLogger(__name__)


class WorkerApp(faust.App):
    """A Faust app whose consumer commits by the ledger (see `commits`)."""

    def _new_transport(self) -> Any:
        return LedgerTransport(self.conf.broker_consumer, self)


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
    datadir = settings.home / "faust"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder
    app = WorkerApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # Tables live in memory and are rebuilt from their Kafka changelog on start.
        store="memory://",
        # Faust's default datadir is `<app id>-data` in the working directory: one stray
        # folder per app id (every test run has its own) wherever a worker was started.
        datadir=str(datadir / "{conf.name}"),
        web_enabled=False,
        autodiscover=False,
        TableManager=WorkerTableManager,  # its recovery ends a rebalance without a loss
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

    def agent(
        source: Any,
        name: str,
        handle: Callable[[Record], Awaitable[asyncio.Future[None] | None]],
        concurrency: int = 1,
    ) -> None:
        """`handle` returns once a record is dealt with, or with a future that says when
        (the recorder's batch): the agent goes on to the next record meanwhile."""

        async def consume(stream: Any) -> None:
            await res.ready()
            consumer = cast(LedgerConsumer, app.consumer)
            async for event in stream.events():
                await _consume_one(consumer, res, name, handle, event)

        app.agent(source, name=name, concurrency=concurrency)(consume)

    def routed(source: Any, route: Route, concurrency: int = 1) -> None:
        agent(source, route.name, lambda r: deliver(route, r, res), concurrency)

    chosen = sorted(ops if ops is not None else OPERATIONS)
    # Priority lanes: the batch requests' topic and each op's batch topic are taken only while
    # the interactive ones (the jobs topic and the op topics) are idle.
    lanes = Lanes(
        app,
        lane_topics(settings, INTERACTIVE, chosen),
        lane_topics(settings, BATCH, chosen),
        lambda: res.stopping,
        loop=res.loop,
    )
    app.add_dependency(lanes)
    # Concurrent like the op agents: a request stuck on a hung S3 must not hold every
    # request behind it on the partition (the ledger keeps the commit behind the slow one).
    # One planner, two lanes: `jobs` (the contract's topic, any priority) is planned at once,
    # `jobs.batch` in the batch turn, as batch tasks are.
    plans = planner.route(res)
    routed(topic(jobs_topic(INTERACTIVE)), lanes.interactive(plans), settings.worker_concurrency)
    agent(
        topic(jobs_topic(BATCH)),
        f"{plans.name}-batch",
        in_turn(lanes, plans, res),
        settings.worker_concurrency,
    )
    for op in chosen:
        interactive = lanes.interactive(steps.route(res, op))
        routed(topic(op_topic(op, INTERACTIVE)), interactive, settings.worker_concurrency)
        batch = steps.route(res, op)
        agent(
            topic(op_topic(op, BATCH)),
            f"{batch.name}-batch",
            in_turn(lanes, batch, res),
            settings.worker_concurrency,
        )

    jobs = JobTable(
        app,
        name=TRACKER_TABLE,
        beacon=app.tables.beacon,
        default=None,
        partitions=partitions[settings.topic("events")],
        key_type=str,
        value_type=None,
    )
    app.tables.add(jobs)

    pruner = TablePruner(jobs, partitions[settings.topic("events")], settings.prune_after_seconds)

    recorder = Recorder(res, linger=settings.recorder_linger_seconds, loop=res.loop)
    app.add_dependency(recorder)  # after `res`, so it stops before it

    async def lifecycle(message: Message[Any]) -> None:
        # One agent per topic, so "handled" means every consumer of the event is done: the
        # tracker (Faust table) and the notifier (webhook rows) here, the recorder
        # (PostgreSQL) when the batch it is in commits, while the agent goes on.
        await asyncio.gather(track(res, jobs, message, jobs.written), notify(res, message))
        pruner.after(message.record.partition)

    route = Route("lifecycle", LIFECYCLE_TYPES, lifecycle)

    async def lifecycle_event(record: Record) -> asyncio.Future[None] | None:
        recorded = await recorder.deliver(route, record)
        if recorded is None:
            return None

        async def recorded_and_tracked() -> None:
            await recorded
            # The tracker's table writes go to its changelog without waiting: the event is
            # handled once the broker took the job's, so a crash never commits past a step
            # result the table rebuilt from the changelog never heard of.
            await jobs.written(record.key_text)

        return asyncio.ensure_future(recorded_and_tracked())

    agent(topic("events"), route.name, lifecycle_event)
    # Sends the webhooks the notifier queued; added after `res`, so it stops before it.
    app.add_dependency(Deliveries(res, loop=res.loop))

    for tier in TIERS:
        # Every partition of a retry topic is in due order, so a relay waiting for its head
        # holds back nothing that is due sooner; concurrency covers the partitions it holds.
        agent(topic(tier.name), f"relay-{tier.name}", lambda r: relay(app, res, r), concurrency=4)
    app.add_dependency(LagMonitor(settings, subscribed, loop=res.loop))
    app.add_dependency(Reconciler(res, loop=res.loop))
    app.add_dependency(Pruner(res, loop=res.loop))
    return app


async def _consume_one(
    consumer: LedgerConsumer,
    res: Resources,
    name: str,
    handle: Callable[[Record], Awaitable[asyncio.Future[None] | None]],
    event: Any,
) -> None:
    """One record through its agent's handler, and what the commit ledger learns of it."""
    message = event.message
    if consumer.already_handled(message):
        return  # read again after a seek back; its effects are in place (see the ledger)
    consumer.taken(message)
    try:
        later = await handle(_record(event))
    except (Deferred, GiveWay):
        consumer.given_back(message)  # read again after the rebalance
        return
    except Exception:
        if res.stopping:
            raise
        # Not dealt with (the DLQ refused it): its commit is held, and the consumer reads
        # the partition again from it (commits.REREAD_AFTER_SECONDS).
        log.exception("%s could not deal with a record; it will be read again", name)
        consumer.given_back(message)
        return
    # Only now may the commit pass this offset (see `commits`).
    _handled(consumer, message, name, later)


def _handled(
    consumer: LedgerConsumer, message: Any, name: str, later: asyncio.Future[None] | None
) -> None:
    """A handler returned: the record is handled, now or when `later` is done (or is to be
    read again if `later` failed)."""
    if later is None:
        consumer.handled(message)
        return

    def settled(later: asyncio.Future[None]) -> None:
        if not later.cancelled() and later.exception() is None:
            consumer.handled(message)
            return
        if not later.cancelled() and not isinstance(later.exception(), NotRecorded):
            log.error("%s could not finish a record; it will be read again", name,
                      exc_info=later.exception())  # fmt: skip
        consumer.given_back(message)

    later.add_done_callback(settled)


def in_turn(lanes: Lanes, route: Route, res: Resources) -> Callable[[Record], Awaitable[None]]:
    """A batch agent's handler (requests or tasks): `route`'s delivery, in the worker's batch
    turn."""

    async def handle(record: Record) -> None:
        await lanes.batch(lambda: deliver(route, record, res))

    return handle


class Deferred(Exception):
    """Not handled now, and not a failure: the record stays uncommitted for whoever owns its
    partition after the rebalance in progress (which seeks back to the commit)."""


async def relay(app: faust.App, res: Resources, record: Record) -> None:
    """Wait until a parked record is due, then send it back to the topic it came from. The
    wait gives way to a rebalance, which must not wait minutes for a relay's sleep."""
    while (wait := record.due - time.time()) > 0:
        if app.rebalancing or res.stopping:
            raise Deferred()
        await asyncio.sleep(min(wait, 1.0))
    origin = record.header(ORIGIN_TOPIC)
    if origin is None:  # not ours to relay
        await res.dead_letter(record, ValueError("retry record without origin"))
        return
    await res.send(origin, record.value or b"", key=record.key_text, headers=record.headers)
