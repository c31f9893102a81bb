"""The recorder: projects `<prefix>.events` into PostgreSQL, the job records the API reads,
and appends each event to the job's event log (`db.job_events`) in the same transaction, so
the record and the live stream never disagree. Both writes are idempotent, so a replayed
event changes nothing.

It writes in batches, one transaction for what the events topic delivered in the
`recorder_linger_seconds` after a batch's first event and while the previous batch was being
written, up to `MAX_BATCH`, in a fixed number of statements however many. Only PostgreSQL's
view waits: the tracker, the terminal event and the notifier do not. Each event's offset
is committed only once its batch has committed (`Recorder.submit` gives the lifecycle agent a
future for that). A batch that fails is written again event by event, each delivered as the
agent would (`handling.deliver`): a bad event is dead-lettered alone, the others recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from mode import Service

from pixstream.db import job_events
from pixstream.db.repository import apply_events
from pixstream.events import CloudEvent, Data, parse_data
from pixstream.redelivery import Record
from pixstream.worker.handling import Message, Route, deliver
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

#: Events written in one transaction at most.
MAX_BATCH: Final = 200
#: Events submitted and not yet written at most; the lifecycle agent waits beyond it.
MAX_PENDING: Final = 1000


#: An event waiting for its batch, and what its batch's end tells.
Pending = tuple[Message[Data], "asyncio.Future[None]"]


class NotRecorded(Exception):
    """The worker stopped before the event was recorded; its offset stays uncommitted and the
    next consumer of its partition records it."""


async def record(conn: Any, job_id: str, event: CloudEvent) -> None:
    """Project `event` onto the job's record and append it to the job's log, atomically."""
    await record_many(conn, [(job_id, event, parse_data(event))])


async def record_many(conn: Any, events: Sequence[tuple[str, CloudEvent, Data]]) -> None:
    """`record` of each (job id, event, its data), in order, in one transaction."""
    async with conn.transaction():
        await apply_events(conn, [(event, data) for _, event, data in events])
        await job_events.append_many(conn, [(job_id, event) for job_id, event, _ in events])


class Recorder(Service):
    """The batch writer: events go in by `submit`, one task writes them in order."""

    def __init__(self, res: Resources, *, linger: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.res = res
        self.linger = linger
        self._queue: list[Pending] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()

    async def submit(self, message: Message[Data]) -> asyncio.Future[None]:
        """Queue `message`'s event; the future is done once the event is recorded (or, when
        it cannot be, dealt with as `deliver` deals with a record), and fails with NotRecorded
        when the worker stops first."""
        while len(self._queue) >= MAX_PENDING and not self.should_stop:
            self._room.clear()
            await self._room.wait()
        future: asyncio.Future[None] = self.loop.create_future()
        if self.should_stop:
            _give_up([(message, future)])
            return future
        self._queue.append((message, future))
        self._arrived.set()
        return future

    async def deliver(self, route: Route, record: Record) -> asyncio.Future[None] | None:
        """`route`'s delivery of a lifecycle event (`handling.deliver`) with its recording
        left to the batch: the future of that (None when the record was not accepted)."""
        submitted: list[asyncio.Future[None]] = []

        async def handle(message: Message[Any]) -> None:
            submitted.append(await self.submit(message))
            await route.handle(message)

        await deliver(replace(route, handle=handle), record, self.res)
        return submitted[0] if submitted else None

    async def on_stop(self) -> None:
        self._room.set()  # a submit waiting for room gives up

    @Service.task
    async def _write(self) -> None:
        await self.res.ready()
        try:
            while not self.should_stop:
                await self._arrived.wait()
                if self.linger:
                    await asyncio.sleep(self.linger)  # the rest of the batch arrives
                self._arrived.clear()
                while self._queue and not self.should_stop:
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    self._room.set()
                    try:
                        await self._write_batch(batch)
                    finally:
                        _give_up(batch)
        finally:  # stopped (the task is cancelled): nothing more is recorded here
            _give_up(self._queue)
            self._queue.clear()

    async def _write_batch(self, batch: Sequence[Pending]) -> None:
        events = [(m.job_id, m.event, m.data) for m, _ in batch]
        try:
            await self.res.write_db(
                lambda conn: record_many(conn, events),
                what=f"recording {len(events)} events",
                job_id=events[0][0],
            )
        except Exception:
            if self.res.stopping:
                return  # not recorded: the next consumer of the partitions records them
            log.exception("a batch of %d events was not recorded; one by one now", len(events))
            for message, future in batch:
                try:
                    await deliver(_alone(self.res, message.event.type), message.record, self.res)
                except Exception:  # stopping, or the DLQ refused it: this and the rest fail
                    if not self.res.stopping:
                        log.exception("an event was not recorded; it will be read again")
                    return
                future.set_result(None)
            return
        for _, future in batch:
            future.set_result(None)


def _alone(res: Resources, type: str) -> Route:
    """The route of one event recorded alone (the lifecycle agent accepted its type)."""

    async def handle(message: Message[Data]) -> None:
        event = (message.job_id, message.event, message.data)
        await res.write_db(
            lambda conn: record_many(conn, [event]),
            what=f"recording {message.event.type}",
            job_id=message.job_id,
        )

    return Route("recorder", frozenset({type}), handle)


def _give_up(batch: Sequence[Pending]) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(NotRecorded())
            future.exception()  # retrieved: whoever waits on it is told; nobody may
