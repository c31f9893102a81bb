"""What the worker commits: an offset moves past a message only once a handler finished it.

faust-streaming decides what to commit from its acks, and both halves of that can pass an
unfinished message (faust-streaming 0.15.3, `faust/transport/consumer.py`):
- it acks the message an agent was handling when the agent raises or is cancelled, in the
  `finally` of the stream iterator (`_cython/streams.pyx` `after()`, `streams.py` `_py_aiter`);
- `Consumer._new_offset` commits the first run of consecutive acked offsets, and its check
  that the run starts at the committed offset C lets C itself be missing
  (`min(acked) - committed_offset > 1`) and is skipped when C is 0 or unknown
  (`if committed_offset:`): never-committed partitions, and every partition between a
  revoke (which pops C) and the next seek, while `wait_empty` commits;
- offsets the fetcher skipped over are added to the acked ones as a "gap" (`_add_gap`).
With agent concurrency above one, or a message that raised, an offset is then committed
past a message no agent finished; a worker killed before it handles it loses it for good
(faust-streaming#606 and its open fix #707; #596; the reproduction is tests/unit/test_commits.py).

PixStream owns this decision instead. `CommitLedger` holds, per partition, where the group's
commit stands and which offsets our handlers finished; the commit moves only across an
unbroken run of finished offsets. Offsets in PixStream's topics are contiguous (the producers
are idempotent, not transactional, and no consumed topic is compacted), so that run is exactly
"every message before it was handled". `LedgerConsumer` plugs the ledger into Faust's
consumer at the two places it computes commits; Faust's acks still drive its own bookkeeping
(what a rebalance waits for) but no longer decide an offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from pixstream import metrics
from pixstream.worker.consumerloop import LoopConsumerThread

log = logging.getLogger(__name__)

#: How often the consumer looks for dropped messages, and how long a commit must have waited
#: on one no handler holds before the partition is read again from it.
REREAD_CHECK_SECONDS = 2.0
REREAD_AFTER_SECONDS = 6.0
#: How long the consumer's delivery loop is given to stop before a seek (see
#: `read_again_from_commit`).
FLOW_SETTLE_SECONDS = 0.05


@dataclass
class _Partition:
    base: int | None = None  # the group's committed offset while we hold the partition
    done: set[int] = field(default_factory=set)  # handled, past `base`
    busy: set[int] = field(default_factory=set)  # with a handler now
    received: set[int] = field(default_factory=set)  # delivered to a stream, past `base`
    seen: int = -1  # the highest offset a handler was given
    since: float = field(default_factory=time.monotonic)  # when `base` last moved
    passed: float | None = None  # when the fetcher was first seen past an undelivered `base`


class CommitLedger:
    """Per partition: the committed offset, the offsets being handled and those handled since.
    No I/O, single-threaded (it lives on the worker's event loop)."""

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def _part(self, tp: TP) -> _Partition:
        return self._parts.setdefault(tp, _Partition())

    def received(self, tp: TP, offset: int) -> None:
        """Faust delivered the message at `offset` to a stream (where it waits for a
        handler)."""
        part = self._part(tp)
        if part.base is None or offset >= part.base:
            part.received.add(offset)

    def taken(self, tp: TP, offset: int) -> None:
        """A handler was given the message at `offset`."""
        part = self._part(tp)
        part.busy.add(offset)
        part.seen = max(part.seen, offset)

    def handled(self, tp: TP, offset: int) -> None:
        """A handler finished the message at `offset`: its effects are durable."""
        part = self._part(tp)
        part.busy.discard(offset)
        part.seen = max(part.seen, offset)
        if part.base is None or offset >= part.base:
            part.done.add(offset)

    def given_back(self, tp: TP, offset: int) -> None:
        """A handler gave the message at `offset` back unfinished (it must be read again)."""
        self._part(tp).busy.discard(offset)

    def already_handled(self, tp: TP, offset: int) -> bool:
        """Whether a handler here finished the message at `offset` since this process was
        given the partition: a copy read again after a seek back (a hole's re-read, the
        re-read at a rebalance's end of what was taken after the assignment). Its effects
        are in place: durable, or in the tracker's in-memory table, which a seek does not
        rebuild. A revoke forgets the partition (`forget`): after a new assignment Faust
        rebuilds the table from its changelog, whose writes are sent without waiting, so
        what was handled before is handled again."""
        part = self._parts.get(tp)
        return part is not None and offset in part.done

    def needs_base(self) -> list[TP]:
        """Partitions given to handlers whose committed offset is not known yet."""
        return [tp for tp, part in self._parts.items() if part.base is None and part.seen >= 0]

    def start(self, tp: TP, committed: int) -> None:
        """The group's commit for `tp` stands at `committed` (the next offset to handle)."""
        part = self._part(tp)
        part.base = committed
        part.done = {o for o in part.done if o >= committed}
        part.received = {o for o in part.received if o >= committed}
        part.since = time.monotonic()
        part.passed = None

    def reread_from(self, tp: TP, offset: int) -> None:
        """`tp` is read again from `offset` (a seek): what reached a stream before is
        delivered again, or dropped again, and only a new delivery counts."""
        self.start(tp, offset)
        self._parts[tp].received.clear()

    def forget(self, tp: TP) -> None:
        """`tp` was revoked: whoever gets it next starts from the group's commit."""
        self._parts.pop(tp, None)

    def pending(self) -> Iterator[TP]:
        """Partitions whose commit may move."""
        return (tp for tp, part in self._parts.items() if part.base is not None and part.done)

    def advance(self, tp: TP) -> int | None:
        """The offset to commit for `tp` now (past every handled message before it), or None
        when the next message to commit has not been handled. Nothing moves until
        `committed`: a commit the broker refuses (a rebalance began) is proposed again."""
        part = self._parts.get(tp)
        if part is None or part.base is None or part.base not in part.done:
            return None
        offset = part.base
        while offset in part.done:
            offset += 1
        return offset

    def committed(self, tp: TP, offset: int) -> None:
        """The broker took the commit of `tp` at `offset`."""
        part = self._parts.get(tp)
        if part is None or part.base is None or offset <= part.base:
            return
        part.done = {o for o in part.done if o >= offset}
        part.received = {o for o in part.received if o >= offset}
        part.base = offset
        part.since = time.monotonic()
        part.passed = None

    def held(
        self, fetched: Mapping[TP, int] | None = None, now: float | None = None
    ) -> dict[TP, tuple[int, float]]:
        """Partitions whose commit waits on an unfinished message that was passed: handlers
        went past it, or the fetcher did (`fetched`: each partition's fetch position) and it
        never reached a stream. (That offset, seconds it has held the commit.) The second
        kind is timed from when a call first saw it: Faust hands a fetched batch to the
        streams one message at a time, so a message can be past the position and on its way
        for a while, and the commit's own age says nothing of that on a partition that was
        idle."""
        now = time.monotonic() if now is None else now
        fetched = fetched or {}
        found = {}
        for tp, part in self._parts.items():
            if part.base is None or part.base in part.done:
                part.passed = None
            elif part.seen >= part.base:
                found[tp] = (part.base, now - part.since)
            elif part.base not in part.received and fetched.get(tp, -1) > part.base:
                part.passed = now if part.passed is None else part.passed
                found[tp] = (part.base, now - max(part.since, part.passed))
            else:
                part.passed = None
        return found

    def holes(
        self, min_age: float, fetched: Mapping[TP, int] | None = None, now: float | None = None
    ) -> dict[TP, int]:
        """Partitions whose commit has waited `min_age` seconds on a passed message (`held`)
        that no handler holds: it was dropped on the way (a rebalance cleared the buffers,
        Faust's fetch loop filtered it out, a relay deferred it, a handler gave it back).
        Reading the partition again from that offset is the only way it comes back."""
        return {
            tp: offset
            for tp, (offset, age) in self.held(fetched, now).items()
            if age >= min_age and offset not in self._parts[tp].busy
        }


class FetchState(NamedTuple):
    position: int  # the next offset the fetcher hands on
    highwater: int | None  # the broker's end of the partition, when known
    paused: bool


def _partitions(tps: Iterable[TP], topics: Any) -> Iterator[TP]:
    return (tp for tp in tps if topics is None or tp in topics or tp.topic in topics)


class LedgerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing what the ledger says instead of what was acked."""

    ledger: CommitLedger

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = CommitLedger()
        deliver = self.callback

        async def received(message: Any) -> None:
            # What reached a stream: a message the fetcher passed that never gets here was
            # dropped on the way (see `CommitLedger.held`).
            if not self._is_changelog_tp(message.tp):
                self.ledger.received(message.tp, message.offset)
            await deliver(message)

        self.callback = received

    def _new_consumer_thread(self) -> LoopConsumerThread:
        return LoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Any) -> bool:
        # Faust's own bookkeeping of an ack (what `wait_empty` waits for during a rebalance),
        # without recording the offset as committable: only `handled()` does that.
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
            return True

    def already_handled(self, message: Any) -> bool:
        if self.ledger.already_handled(message.tp, message.offset):
            metrics.REREADS_SKIPPED.labels(topic=message.tp.topic).inc()
            return True
        return False

    def taken(self, message: Any) -> None:
        self.ledger.taken(message.tp, message.offset)

    def handled(self, message: Any) -> None:
        self.ledger.handled(message.tp, message.offset)

    def given_back(self, message: Any) -> None:
        self.ledger.given_back(message.tp, message.offset)

    @Service.timer(REREAD_CHECK_SECONDS)
    async def _reread_holes(self) -> None:
        await self.reread_holes()

    async def reread_holes(self) -> None:
        """Seek back to every dropped message, so the partition is read again from there
        (what comes after it again too: handled twice, harmlessly)."""
        fetched = self.fetched()
        self.report(fetched)
        if self.app.rebalancing:
            return  # the rebalance ends with a seek to the commit anyway
        assignment = self.assignment()
        holes = {
            tp: offset
            for tp, offset in self.ledger.holes(REREAD_AFTER_SECONDS, fetched).items()
            if tp in assignment
        }
        if not holes:
            return
        holes = await self._within_log(holes)
        for tp, offset in holes.items():
            log.warning(
                "offset %d of %s[%d] was dropped before a handler finished it; reading the "
                "partition again from there",
                offset,
                tp.topic,
                tp.partition,
            )
            metrics.REREADS.labels(topic=tp.topic).inc()
        await self._read_again_from(holes)  # restarts each hole's clock

    async def _within_log(
        self, offsets: Mapping[TP, int], starts: Mapping[TP, int] | None = None
    ) -> dict[TP, int]:
        """Each offset, or its partition's log start when the broker deleted it already
        (retention): what is gone cannot be read again, and a commit waiting on it would
        have the partition read again from the log start every few seconds for ever.
        `starts`: the log starts, when just read."""
        if starts is None:
            starts = await self.earliest_offsets(*offsets)
        found = {}
        for tp, offset in offsets.items():
            start = int(starts.get(tp, offset))
            if offset < start:
                log.error(
                    "offsets %d to %d of %s[%d] were deleted by the broker (retention) before "
                    "a handler finished them; going on from %d",
                    offset,
                    start - 1,
                    tp.topic,
                    tp.partition,
                    start,
                )
                metrics.EXPIRED_UNHANDLED.labels(topic=tp.topic).inc(start - offset)
            found[tp] = max(offset, start)
        return found

    def fetch_states(self, topics: Collection[str] | None = None) -> dict[TP, FetchState]:
        """aiokafka's fetch state of each partition held with a known position (of `topics`
        only, when given)."""
        try:
            tps = self.assignment()
            states = self._thread._ensure_consumer()._subscription.subscription.assignment
        except (ConsumerNotStarted, AttributeError):  # not started, or between assignments
            return {}
        found = {}
        for tp in tps:
            if topics is not None and tp.topic not in topics:
                continue
            state = states.state_value(tp)
            if state is not None and state.has_valid_position:
                found[tp] = FetchState(state.position, state.highwater, state.paused)
        return found

    def fetched(self) -> dict[TP, int]:
        """Each held partition's fetch position: the messages below it were handed to Faust."""
        return {tp: state.position for tp, state in self.fetch_states().items()}

    async def hold_fetching(self, tps: Iterable[TP], held: bool) -> None:
        """Stop (`held`) or restart fetching `tps`. In aiokafka, where a pause drops the
        records it buffered for the partition without moving its position, so they are
        fetched again on resume. Faust's `pause_partitions` instead makes its fetch loop
        filter out the paused partitions' records it was already handed, past which the
        position has moved: they would be skipped until a seek."""
        change = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        if not change:
            return
        inner = self._thread._ensure_consumer()
        # The assignment may have changed since the list was made (a rebalance began):
        # aiokafka refuses a partition it no longer holds.
        current = inner.assignment()
        with contextlib.suppress(IllegalStateError):
            (inner.pause if held else inner.resume)(*(tp for tp in change if tp in current))

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        await self._learn_bases()
        return bool(await super().force_commit(topics, start_new_transaction))

    async def _learn_bases(self) -> None:
        """Read the group's committed offset of newly held partitions from the broker (the
        log start when nothing was committed yet)."""
        assignment = self.assignment()
        new = self.ledger.needs_base()
        for tp in new:
            if tp not in assignment:
                self.ledger.forget(tp)
        for tp, position in (await self._group_positions(set(new) & assignment)).items():
            self.ledger.start(tp, position)

    async def read_again_from_commit(self) -> None:
        """Seek every stream partition held to where the group's commit stands (the log
        start when nothing was committed), so what was fetched and then dropped before a
        handler took it is read again (see `recovery`). Faust's own `perform_seek` leaves
        partitions with no commit, or a commit at 0, where they are."""
        held = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
        await self._read_again_from(await self._group_positions(held))

    async def _read_again_from(self, offsets: Mapping[TP, int]) -> None:
        """Seek each partition to its offset, with flow stopped, and have the ledger count
        from there. With flow running, a batch the fetcher returned before the seeks and
        delivered after them would move Faust's read offset past them, and Faust drops
        what it reads below its read offset."""
        self.stop_flow()
        try:
            # What the delivery loop holds ends within a few turns of the event loop once
            # flow is stopped (its wait on flow returns, its batch breaks off); no I/O.
            await asyncio.sleep(FLOW_SETTLE_SECONDS)
            assignment = self.assignment()
            for tp, offset in offsets.items():
                if tp in assignment:
                    self.ledger.reread_from(tp, offset)
                    await self.seek(tp, offset)  # also lets Faust deliver from there again
        finally:
            if not self.app.rebalancing:  # else the next rebalance resumes flow at its end
                self.resume_flow()

    async def _group_positions(self, tps: Collection[TP]) -> dict[TP, int]:
        """The group's committed offset of each of `tps`, or the log start where there is
        none or it is below it: one request for the commits, one for the log starts."""
        if not tps:
            return {}
        coordinator = self._thread._ensure_consumer()._coordinator
        committed = await coordinator.fetch_committed_offsets(list(tps))
        positions = {
            tp: int(meta.offset)
            for tp in tps
            if (meta := committed.get(tp)) is not None and meta.offset >= 0
        }
        starts = await self.earliest_offsets(*tps)
        positions.update(
            (tp, int(starts[tp])) for tp in tps if tp not in positions and tp in starts
        )
        return await self._within_log(positions, starts)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        return _partitions(list(self.ledger.pending()), topics)

    def _new_offset(self, tp: TP) -> int | None:
        return self.ledger.advance(tp)

    def _should_commit(self, tp: TP, offset: int) -> bool:
        # Faust records an offset as committed when it only tried (`_commit_offsets` updates
        # `_committed_offset` whatever the broker said), so its own check would never try a
        # refused commit again; the ledger proposes only what is not committed yet.
        return True

    async def _commit(self, offsets: Any) -> bool:
        # A commit refused because a rebalance began returns False here, and that partition
        # keeps its offsets until a commit is taken: with nothing more arriving on it, the
        # commit is otherwise never made (its group offset stays behind, or absent, for good).
        took = bool(await super()._commit(offsets))
        if took:
            for tp, offset in offsets.items():
                self.ledger.committed(tp, offset)
        return took

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self.ledger.forget(tp)

    def report(self, fetched: Mapping[TP, int]) -> None:
        """Export how long each partition's commit has been held (a metric and a log line);
        `fetched`: each partition's fetch position."""
        for tp, (offset, seconds) in self.ledger.held(fetched).items():
            metrics.COMMIT_HELD_SECONDS.labels(topic=tp.topic, partition=str(tp.partition)).set(
                seconds
            )
            if seconds > 60:
                log.warning(
                    "the commit of %s[%d] waits on offset %d for %.0fs",
                    tp.topic,
                    tp.partition,
                    offset,
                    seconds,
                )


class LedgerTransport(faust_aiokafka.Transport):
    Consumer = LedgerConsumer
