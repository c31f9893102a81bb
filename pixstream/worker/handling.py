"""The one way through an agent: parse the envelope, check the type, call the handler with a
typed message, and turn what it raised into the one answer for that kind of failure.

| what happened                                     | answer                               |
|---------------------------------------------------|--------------------------------------|
| not a CloudEvent, data invalid, type not accepted | dead-lettered at once                |
| the handler returned                              | done                                 |
| TransientError (S3, HTTP, a crashed renderer)     | parked in a retry tier, then the DLQ |
| PermanentError (the input's fault)                | the route's `refuse` (the job fails) |
| ... that is not the job's to fail (`fails_job`)   | dead-lettered                        |
| anything else (a bug)                             | dead-lettered with its traceback     |

`deliver` returns once the record is dealt with durably (its effects written, or parked, or
dead-lettered); only then may its offset be committed. When even that cannot be done (the
worker is stopping, or the DLQ refuses the record) it raises, and the offset stays where it
is: the record comes back to the next consumer of its partition.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pixstream import errors
from pixstream.events import CloudEvent, Data, parse_data
from pixstream.redelivery import Record

log = logging.getLogger(__name__)
D = TypeVar("D", bound=Data)


@dataclass(frozen=True)
class Message(Generic[D]):
    """A consumed record with its parsed envelope and typed data."""

    record: Record
    event: CloudEvent
    data: D

    @property
    def job_id(self) -> str:
        return str(getattr(self.data, "job_id", "") or self.record.key_text)


class Redelivery(Protocol):
    """Where records go that cannot be handled now (the worker's Resources)."""

    @property
    def stopping(self) -> bool: ...

    async def park(self, record: Record, error: BaseException) -> None: ...

    async def dead_letter(self, record: Record, error: BaseException) -> None: ...


Handle = Callable[[Message[Any]], Awaitable[None]]
Refuse = Callable[[Message[Any], errors.PermanentError], Awaitable[None]]
#: Told of an envelope whose data is invalid; True when it failed the job it names (so the
#: record needs no dead letter).
RefuseInvalid = Callable[[CloudEvent, errors.InvalidEvent], Awaitable[bool]]


@dataclass(frozen=True)
class Route:
    """What an agent accepts, how it handles it, and how it fails a job for a permanent error
    (None: the record is dead-lettered, since there is no job to tell)."""

    name: str
    accepts: frozenset[str]
    handle: Handle
    refuse: Refuse | None = None
    refuse_invalid: RefuseInvalid | None = None


async def deliver(route: Route, record: Record, to: Redelivery) -> None:
    """Handle `record` by `route`; returns once it is dealt with (see the module's table)."""
    try:
        event = CloudEvent.parse(record.value or b"")
        if event.type not in route.accepts:
            raise errors.InvalidEvent(
                f"type: {route.name} takes {', '.join(sorted(route.accepts))}, got {event.type!r}"
            )
    except errors.InvalidEvent as exc:
        await to.dead_letter(record, exc)
        return
    try:
        message: Message[Any] = Message(record, event, parse_data(event))
    except errors.InvalidEvent as exc:
        if route.refuse_invalid is None or not await route.refuse_invalid(event, exc):
            await to.dead_letter(record, exc)
        return
    try:
        await route.handle(message)
    except errors.TransientError as exc:
        if to.stopping:
            raise  # not dealt with: the next owner of the partition gets it again
        await to.park(record, exc)
    except errors.PermanentError as exc:
        if route.refuse is None or not exc.fails_job:
            await to.dead_letter(record, exc)
        else:
            await route.refuse(message, exc)
    except Exception as exc:
        if to.stopping:
            raise
        log.exception(
            "%s crashed on a record; dead-lettering it",
            route.name,
            extra={"job_id": message.job_id, "topic": record.topic, "offset": record.offset},
        )
        await to.dead_letter(record, exc)
