"""Priority lanes: `"priority": "batch"` work waits on topics of its own, requests on
`<prefix>.jobs.batch` and tasks on `<prefix>.op.<op>.batch`, and is taken only while this
worker's interactive topics (`<prefix>.jobs` and `<prefix>.op.<op>`) have nothing waiting,
so a backfill never delays a new upload by more than one batch handling per worker: neither
its renders nor, when its requests come in a burst, their planning.

Two mechanisms, one for throughput and one for the bound:
- `Lanes` looks at the interactive partitions this worker holds every STEER_SECONDS: while
  one has a request or a task in flight or a message on the broker past the consumer's
  position, the batch partitions (requests and tasks) are paused in aiokafka's fetcher
  (nothing more is fetched for them, and nothing fetched is lost), otherwise resumed. A
  rebalance gives the fetcher a new, unpaused assignment, so the state is asserted again on
  every tick rather than set once.
- `batch_turn` is the gate every batch request and task passes before it is handled: one at
  a time per worker, and only while the interactive lane is idle. Messages fetched before a
  pause wait there instead of running, so an interactive request or task that arrives while
  batch work runs waits for that one handling at most (and the render pool keeps a slot free
  for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

from faust.types import TP
from mode import Service

from pixstream import metrics
from pixstream.worker.commits import FetchState
from pixstream.worker.handling import Message, Route

log = logging.getLogger(__name__)

STEER_SECONDS: Final = 0.05


class GiveWay(Exception):
    """A batch request or task waiting for its turn gives way to a rebalance or a shutdown:
    it is not handled now, and is read again by whoever holds its partition next."""


class Lanes(Service):
    """Steers one worker's batch lane by its interactive lane (see the module's doc)."""

    def __init__(
        self,
        app: Any,
        interactive: Iterable[str],
        batch: Iterable[str],
        stopping: Callable[[], bool],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._app = app
        self._interactive = frozenset(interactive)
        self._batch = frozenset(batch)
        self._steered = self._interactive | self._batch
        self._stopping = stopping
        self._in_flight = 0  # interactive requests and tasks being handled in this worker
        self._idle = asyncio.Event()
        self._turn = asyncio.Lock()  # one batch request or task at a time per worker
        self._paused = False

    def interactive(self, route: Route) -> Route:
        """`route`, counted as interactive work in flight while it handles a request or a
        task."""

        async def handle(message: Message[Any]) -> None:
            self._in_flight += 1
            self._idle.clear()
            try:
                await route.handle(message)
            finally:
                self._in_flight -= 1

        return Route(route.name, route.accepts, handle, route.refuse, route.refuse_invalid)

    @asynccontextmanager
    async def batch_turn(self) -> AsyncIterator[None]:
        """Hold the worker's one batch slot, entered only while the interactive lane is
        idle; GiveWay during a rebalance or a shutdown."""
        async with self._turn:
            while not self._idle.is_set():
                if self._app.rebalancing or self._stopping():
                    raise GiveWay()
                try:
                    await asyncio.wait_for(self._idle.wait(), timeout=0.5)
                except TimeoutError:
                    continue
            yield

    async def batch(self, handle: Callable[[], Awaitable[None]]) -> None:
        """Run a batch request's or task's handling in its turn."""
        async with self.batch_turn():
            await handle()

    def waiting(self, states: Mapping[TP, FetchState]) -> bool:
        """Interactive work in flight, or on the broker past the consumer's position
        (`states`: the fetcher's), for the interactive partitions this worker holds."""
        if self._in_flight:
            return True
        return any(
            state.highwater is not None and state.highwater > state.position
            for tp, state in states.items()
            if tp.topic in self._interactive
        )

    @Service.timer(STEER_SECONDS)
    async def _steer(self) -> None:
        await self.tick()

    async def tick(self) -> None:
        """One steering, logged rather than raised: a timer that raises crashes the worker
        (mode's `Service.crash`), and the next tick steers again."""
        try:
            await self.steer()
        except Exception:
            log.exception("steering the batch lane failed")

    async def steer(self) -> None:
        """Pause the batch partitions this worker holds while interactive work waits, resume
        them otherwise (one tick of the steering timer)."""
        consumer = self._app.consumer
        if consumer is None or self._stopping():  # a stopping consumer may not answer
            return
        if self._app.rebalancing or getattr(self._app, "in_recovery", False):
            # A rebalance gives aiokafka a new assignment, unpaused; the first tick after it
            # pauses the batch partitions again if interactive work waits.
            self._idle.clear()
            return
        # Empty before the consumer starts (the timer starts with the app) and between
        # assignments.
        states = consumer.fetch_states(self._steered)
        busy = self.waiting(states)
        if busy:
            self._idle.clear()
        # Paused where the fetcher is, never in Faust's fetch loop (see
        # `LedgerConsumer.hold_fetching`): a pause there skips what was already fetched.
        change = [tp for tp, s in states.items() if tp.topic in self._batch and s.paused != busy]
        await consumer.hold_fetching(change, busy)
        if not busy:
            self._idle.set()
        if busy != self._paused:
            self._paused = busy
            log.debug("batch lane %s", "paused" if busy else "resumed")
        metrics.LANE_PAUSED.labels(lane="batch").set(1 if busy else 0)
