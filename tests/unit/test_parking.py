"""Parking the slow topics' quiet partitions: which are parked, when their ends are read."""

from __future__ import annotations

from faust.types import TP

from pixstream.worker.commits import FetchState
from pixstream.worker.parking import PROBE_SECONDS, Parking

RETRY, BATCH, JOBS = TP("t.retry.5s", 0), TP("t.op.crop.batch", 1), TP("t.jobs", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _parking(clock: Clock) -> Parking:
    return Parking(["t.retry.5s", "t.op.crop.batch"], clock=clock)


def test_a_caught_up_partition_of_a_slow_topic_is_parked_others_are_not() -> None:
    p = _parking(Clock())
    p.update(
        {
            RETRY: FetchState(position=4, highwater=4, paused=False),
            BATCH: FetchState(position=4, highwater=9, paused=False),  # work waiting
            JOBS: FetchState(position=4, highwater=4, paused=False),  # not a slow topic
            TP("t.retry.5s", 1): FetchState(position=0, highwater=None, paused=False),
        }
    )
    assert [tp for tp in (RETRY, BATCH, JOBS, TP("t.retry.5s", 1)) if p.parked(tp)] == [RETRY]


def test_parked_ends_are_read_once_a_probe_interval_and_a_moved_one_is_unparked() -> None:
    clock = Clock()
    p = _parking(clock)
    states = {
        RETRY: FetchState(position=4, highwater=4, paused=False),
        BATCH: FetchState(position=7, highwater=7, paused=False),
    }
    p.update(states)
    assert p.to_probe() == []
    clock.now += PROBE_SECONDS
    assert p.to_probe() == [BATCH, RETRY]
    assert p.to_probe() == []  # looked just now
    p.probed({RETRY: 4, BATCH: 8}, states)
    assert (p.parked(RETRY), p.parked(BATCH)) == (True, False)


def test_a_partition_no_longer_held_or_a_rebalance_is_forgotten() -> None:
    p = _parking(Clock())
    p.update({RETRY: FetchState(4, 4, False), BATCH: FetchState(7, 7, False)})
    p.update({BATCH: FetchState(7, 7, True)})  # RETRY was revoked
    assert (p.parked(RETRY), p.parked(BATCH), p.count()) == (False, True, 1)
    p.clear()
    assert p.count() == 0


def test_a_woken_partition_stays_unparked_until_a_fetch_reaches_the_end_the_probe_saw() -> None:
    # The fetch state says "caught up" until the fetcher's next request, which may be a
    # long poll away: parked again at once, the partition would never be fetched.
    clock = Clock()
    p = _parking(clock)
    caught_up = {RETRY: FetchState(position=4, highwater=4, paused=True)}
    p.update(caught_up)
    clock.now += PROBE_SECONDS
    p.probed({RETRY: 6}, caught_up)  # two records arrived
    p.update(caught_up)  # no fetch yet: the state is the old one
    assert not p.parked(RETRY)
    p.update({RETRY: FetchState(position=5, highwater=6, paused=False)})  # fetching them
    assert not p.parked(RETRY)
    p.update({RETRY: FetchState(position=6, highwater=6, paused=False)})  # caught up again
    assert p.parked(RETRY)
