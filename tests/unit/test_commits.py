"""What the worker commits. The first tests reproduce, on faust-streaming's own consumer, how
it commits past a message no agent handled; the rest pin the ledger that replaced it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import faust
import pytest
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message

from pixstream.worker.commits import CommitLedger, LedgerConsumer, LedgerTransport
from pixstream.worker.consumerloop import LoopConsumerThread

pytestmark = pytest.mark.unit

TOPIC = "pixstream.op.resize"
TP0 = TP(TOPIC, 0)


def _message(offset: int) -> Message:
    return Message(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp=0.0,
        timestamp_type=0,
        headers=None,
        key=b"job",
        value=b"task",
        checksum=None,
    )


@pytest.fixture
def app() -> faust.App:
    app = faust.App("commits-test", broker="kafka://127.0.0.1:9092", web_enabled=False)
    cast(Any, app.topics)._acking_topics.add(TOPIC)
    return app


async def _to_streams(message: Message) -> None:
    pass


def _consumer(app: faust.App, transport: type[Any]) -> Any:
    return transport("kafka://127.0.0.1:9092", app).create_consumer(
        callback=_to_streams,
        on_partitions_revoked=lambda revoked: None,
        on_partitions_assigned=lambda assigned: None,
    )


@pytest.mark.parametrize("committed", [None, 10])
def test_faust_commits_past_a_message_it_acked_without_an_agent(
    app: faust.App, committed: int | None
) -> None:
    # The message at the committed offset is still being rendered; the three after it were
    # fetched before a rebalance and skipped by the stream, which acks what it skips.
    consumer = _consumer(app, faust_aiokafka.Transport)
    base = committed or 0
    consumer._committed_offset[TP0] = committed
    skipped = [base + 1, base + 2, base + 3]
    for offset in skipped:
        consumer.ack(_message(offset))
    # Stock faust-streaming commits past the unfinished message at `base`: lost if this
    # worker dies before it handles the re-fetched copy (faust-streaming#596, #606).
    assert consumer._new_offset(TP0) == base + 4


@pytest.mark.parametrize("committed", [None, 10])
def test_the_ledger_consumer_commits_only_what_a_handler_finished(
    app: faust.App, committed: int | None
) -> None:
    consumer = _consumer(app, LedgerTransport)
    assert isinstance(consumer, LedgerConsumer)
    base = committed or 0
    consumer.ledger.start(TP0, base)
    for offset in (base + 1, base + 2, base + 3):
        assert consumer.ack(_message(offset))  # Faust's bookkeeping still sees the ack
    assert consumer._new_offset(TP0) is None
    assert list(consumer._filter_tps_with_pending_acks()) == []
    for offset in (base + 1, base + 2, base + 3):
        consumer.handled(_message(offset))
    assert consumer._new_offset(TP0) is None  # `base` is still being rendered
    consumer.handled(_message(base))
    assert consumer._new_offset(TP0) == base + 4


async def test_a_commit_the_broker_refused_is_made_at_the_next_commit(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit sent while a rebalance begins comes back refused ("already rebalanced"), and
    # Faust notes the offset as committed all the same. With nothing more arriving on the
    # partition, a ledger that moved on the attempt never commits it: the group's offset
    # stays absent and the partition looks unfinished forever (seen in the fault suite).
    consumer = _consumer(app, LedgerTransport)
    consumer.ledger.start(TP0, 0)
    consumer.handled(_message(0))
    answers = iter([False, True])

    async def broker(self: Any, offsets: Any) -> bool:
        return next(answers)

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit", broker)
    for took in (False, True):
        proposed = consumer._filter_committable_offsets([TP0])
        assert proposed == {TP0: 1}
        assert await consumer._commit(proposed) is took
        consumer._committed_offset.update(proposed)  # what Faust does either way
    assert consumer._filter_committable_offsets([TP0]) == {}
    assert list(consumer._filter_tps_with_pending_acks()) == []


async def test_faust_drops_what_it_fetched_for_a_partition_paused_while_it_delivers(
    app: faust.App,
) -> None:
    # How the batch lane lost tasks (CI, test_lanes): a pause through Faust's
    # `pause_partitions` while its fetch loop delivers a batch. aiokafka has moved its
    # position past the batch, and Faust's loop yields only active partitions' records.
    consumer = _consumer(app, LedgerTransport)
    consumer._active_partitions = {TP0}
    batch = [ConsumerRecord(TOPIC, 0, o, 0, 0, b"job", b"task", None, 3, 4, ()) for o in (0, 1, 2)]

    async def fetched(*_: float) -> Any:
        return {TP0: batch}, consumer._get_active_partitions()

    consumer._wait_next_records = fetched
    consumer.highwater = lambda tp: 3
    delivered = []
    async for _tp, message in consumer.getmany(timeout=1.0):
        delivered.append(message.offset)
        consumer.pause_partitions([TP0])  # the lanes' old steering tick, mid-batch
    assert delivered == [0]


async def test_the_ledger_consumer_records_what_reached_a_stream(app: faust.App) -> None:
    consumer = _consumer(app, LedgerTransport)
    consumer.ledger.start(TP0, 0)
    await consumer.callback(_message(0))
    # 0 waits in a stream for a handler; 1 was fetched and never delivered.
    now = time.monotonic()
    assert consumer.ledger.holes(5.0, {TP0: 2}, now=now + 6) == {}
    consumer.handled(_message(0))
    consumer.ledger.committed(TP0, 1)
    assert consumer.ledger.holes(5.0, {TP0: 2}, now=now + 7) == {}  # first seen passed
    assert consumer.ledger.holes(5.0, {TP0: 2}, now=now + 13) == {TP0: 1}


def test_ledger_moves_over_out_of_order_completions_only_when_unbroken() -> None:
    ledger = CommitLedger()
    ledger.handled(TP0, 7)  # handled before the committed offset was known
    assert ledger.needs_base() == [TP0]
    ledger.start(TP0, 5)
    assert ledger.advance(TP0) is None
    ledger.handled(TP0, 6)
    assert ledger.advance(TP0) is None
    assert ledger.held(now=float("inf"))[TP0][0] == 5
    ledger.handled(TP0, 5)
    assert ledger.advance(TP0) == 8
    assert ledger.advance(TP0) == 8  # proposed again until the broker takes it
    ledger.committed(TP0, 8)
    assert ledger.advance(TP0) is None
    assert ledger.held() == {}
    assert list(ledger.pending()) == []


def test_a_message_dropped_before_its_handler_is_a_hole_one_being_handled_is_not() -> None:
    ledger = CommitLedger()
    ledger.start(TP0, 10)
    ledger.taken(TP0, 10)
    ledger.taken(TP0, 11)
    ledger.handled(TP0, 11)
    # 10 is still with its handler: slow, not lost.
    assert ledger.holes(min_age=5.0, now=float("inf")) == {}
    ledger.given_back(TP0, 10)  # e.g. a relay deferred it for a rebalance
    assert ledger.holes(min_age=5.0, now=float("inf")) == {TP0: 10}
    assert ledger.holes(min_age=1e9) == {}  # not before it has waited min_age


def test_a_message_the_fetcher_skipped_is_a_hole_once_a_later_one_was_taken() -> None:
    ledger = CommitLedger()
    ledger.start(TP0, 0)  # never committed: Faust does not even seek there
    ledger.taken(TP0, 3)  # 0..2 were cleared from the buffers by a rebalance
    ledger.handled(TP0, 3)
    assert ledger.holes(min_age=0.0, now=float("inf")) == {TP0: 0}
    ledger.taken(TP0, 0)
    assert ledger.holes(min_age=0.0, now=float("inf")) == {}


def test_the_last_message_fetched_and_never_delivered_is_a_hole() -> None:
    # Nothing after it reaches a handler, so only the fetch position shows it was passed:
    # the ledger without it waited for new traffic on the partition (242 s in CI).
    ledger = CommitLedger()
    ledger.start(TP0, 0)
    ledger.received(TP0, 0)
    ledger.taken(TP0, 0)
    ledger.handled(TP0, 0)
    ledger.committed(TP0, 1)
    later = time.monotonic() + 60  # the partition then idle for a minute
    assert ledger.holes(5.0, fetched={TP0: 1}, now=later) == {}  # nothing passed
    # Fetched now: it may still be on its way to its stream, whatever the commit's age.
    assert ledger.holes(5.0, fetched={TP0: 2}, now=later) == {}
    assert ledger.holes(5.0, fetched={TP0: 2}, now=later + 4) == {}
    assert ledger.holes(5.0, fetched={TP0: 2}, now=later + 6) == {TP0: 1}
    ledger.received(TP0, 1)  # delivered to its stream: waiting for a handler, not lost
    assert ledger.holes(5.0, fetched={TP0: 2}, now=later + 7) == {}


def test_a_seek_back_counts_only_what_reaches_a_stream_again() -> None:
    ledger = CommitLedger()
    ledger.start(TP0, 0)
    ledger.received(TP0, 0)  # then dropped from its stream by a rebalance
    ledger.reread_from(TP0, 0)
    now = time.monotonic()
    assert ledger.holes(5.0, fetched={TP0: 1}, now=now) == {}
    assert ledger.holes(5.0, fetched={TP0: 1}, now=now + 6) == {TP0: 0}  # dropped again


def test_ledger_ignores_offsets_below_the_commit_and_forgets_revoked_partitions() -> None:
    ledger = CommitLedger()
    ledger.start(TP0, 100)
    ledger.handled(TP0, 99)  # a stale copy from an earlier generation
    assert ledger.advance(TP0) is None
    ledger.handled(TP0, 100)
    ledger.forget(TP0)  # revoked before the commit: the next owner handles 100 again
    assert ledger.advance(TP0) is None
    assert list(ledger.pending()) == []
    assert not ledger.already_handled(TP0, 100)  # even when the next owner is this process


def test_what_was_handled_is_not_handled_again_when_its_partition_is_read_again() -> None:
    ledger = CommitLedger()
    ledger.start(TP0, 10)
    for offset in (10, 11, 12):
        ledger.taken(TP0, offset)
    ledger.handled(TP0, 11)
    ledger.handled(TP0, 12)
    ledger.given_back(TP0, 10)
    # The hole's re-read delivers 10, 11 and 12 again: only 10 is handled.
    ledger.start(TP0, 10)
    assert [o for o in (10, 11, 12) if ledger.already_handled(TP0, o)] == [11, 12]
    ledger.handled(TP0, 10)
    assert ledger.advance(TP0) == 13
    ledger.committed(TP0, 13)
    assert not ledger.already_handled(TP0, 12)  # below the commit: never delivered again


def _consumer_at_log_start(app: faust.App, log_start: int) -> tuple[LedgerConsumer, list[Any]]:
    """An unstarted ledger consumer holding TP0, whose broker deleted every offset below
    `log_start` (retention); the seeks it makes are recorded."""
    consumer = cast(LedgerConsumer, _consumer(app, LedgerTransport))
    seeks: list[Any] = []

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: log_start for tp in tps}

    async def read_again_from(offsets: Any) -> None:
        seeks.append(dict(offsets))
        for tp, offset in offsets.items():
            consumer.ledger.reread_from(tp, offset)

    patched = cast(Any, consumer)
    patched.earliest_offsets = earliest_offsets
    patched._read_again_from = read_again_from
    patched.assignment = lambda: {TP0}
    patched.fetched = lambda: {TP0: log_start + 1}
    return consumer, seeks


async def test_a_hole_the_broker_deleted_is_read_again_from_the_log_start_once(
    app: faust.App,
) -> None:
    consumer, seeks = _consumer_at_log_start(app, log_start=50)
    ledger = consumer.ledger
    ledger.start(TP0, 10)  # the group's commit, since deleted
    ledger.taken(TP0, 50)  # the fetcher reset to the log start
    ledger.handled(TP0, 50)
    ledger._parts[TP0].since -= 60
    await consumer.reread_holes()
    assert seeks == [{TP0: 50}]  # not 10: the broker no longer has it
    ledger.handled(TP0, 50)
    assert ledger.advance(TP0) == 51
    await consumer.reread_holes()
    assert seeks == [{TP0: 50}]  # and no hole any more


async def test_a_hole_the_broker_still_has_is_read_again_from_itself(app: faust.App) -> None:
    consumer, seeks = _consumer_at_log_start(app, log_start=5)
    ledger = consumer.ledger
    ledger.start(TP0, 10)
    ledger.taken(TP0, 11)
    ledger.handled(TP0, 11)
    ledger._parts[TP0].since -= 60
    await consumer.reread_holes()
    assert seeks == [{TP0: 10}]


async def test_a_commit_below_the_log_start_starts_the_ledger_at_the_log_start(
    app: faust.App,
) -> None:
    consumer, _ = _consumer_at_log_start(app, log_start=50)

    class Coordinator:
        async def fetch_committed_offsets(self, tps: list[TP]) -> dict[TP, Any]:
            return {TP0: OffsetAndMetadata(10, "")}

    class Thread:
        def _ensure_consumer(self) -> Any:
            return type("Inner", (), {"_coordinator": Coordinator()})()

        async def call_thread(self, fun: Any, *args: Any) -> Any:
            return await fun(*args)

    cast(Any, consumer)._thread = Thread()
    assert await consumer._group_positions({TP0}) == {TP0: 50}


async def test_the_ledger_consumer_runs_aiokafka_on_the_workers_loop(app: faust.App) -> None:
    consumer = cast(LedgerConsumer, _consumer(app, LedgerTransport))
    inner = consumer._thread
    assert isinstance(inner, LoopConsumerThread)
    assert inner.thread_loop is asyncio.get_running_loop()
    called_on: list[int] = []

    def plain(value: int) -> int:  # Faust calls through with plain functions too
        called_on.append(threading.get_ident())
        return value

    async def coroutine(value: int) -> int:
        called_on.append(threading.get_ident())
        return value + 1

    assert await inner.call_thread(plain, 1) == 1
    assert await inner.call_thread(coroutine, 1) == 2
    assert called_on == [threading.get_ident()] * 2
