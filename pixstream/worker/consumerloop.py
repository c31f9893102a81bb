"""Faust's aiokafka consumer on the worker's own event loop, not on a thread of its own.

faust-streaming runs aiokafka in a `mode.ServiceThread` with its own loop, and every call
into it (each `getmany`, commit, seek, pause) crosses over through a method queue and back
with `call_soon_threadsafe`: the GIL changes hands a few hundred times per job, and the
thread's loop is a second selector to wake. Nothing is gained for it: aiokafka's work is
Python holding the GIL, so the two threads never ran at once; renders run in the render
pool's processes. On the one loop a call into the consumer is a plain await, and aiokafka's
rebalance callbacks await Faust's handlers directly, as in any aiokafka application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service
from mode.utils.futures import maybe_async


class LoopConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """`AIOKafkaConsumerThread` as a plain service of the loop it was made on."""

    # The thread's shutdown handshake (`_shutdown` set by the thread when it has stopped
    # its children) has no thread to do it: stop as a plain service does.
    wait_for_shutdown = False

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        self._thread_started.set()
        await Service.start(self)

    async def stop(self) -> None:
        await Service.stop(self)

    async def on_stop(self) -> None:
        await self.on_thread_stop()  # stops the aiokafka consumer

    # What `ServiceThread` leaves to its thread, done here as any service does it.
    _stopped_set = Service._stopped_set
    _stop_children = Service._stop_children
    _stop_futures = Service._stop_futures
    _stop_exit_stacks = Service._stop_exit_stacks

    # Faust calls through here with coroutine functions and plain ones alike.
    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await self.consumer.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await self.consumer.on_partitions_assigned(assigned, generation_id)
