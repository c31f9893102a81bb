"""Parking: a partition of a slow topic (the batch lane's and the retry tiers') that has
nothing on the broker past the fetcher's position is paused in aiokafka's fetcher, and its
end is read every PROBE_SECONDS instead; it is fetched again once the broker has more.

Why: aiokafka puts every partition it fetches in every fetch request and reads every one
back (it has no KIP-227 fetch sessions), a worker holds about 117, and each message a job
sends costs the worker a fetch. The ~60 slow partitions, nearly always empty, were paid for
by every job: parked, a reused job costs the worker about a tenth less CPU
(docs/benchmarks.md, session 11). What reaches a parked partition waits at most
PROBE_SECONDS longer: less than the shortest retry delay, and nothing batch work notices.

No I/O here: `Lanes`, which owns pausing in the fetcher, reads the ends and applies the
pauses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from faust.types import TP

from pixstream.worker.commits import FetchState

PROBE_SECONDS: Final = 1.0


class Parking:
    """Which partitions of `topics` are parked, and when their ends are due a look."""

    def __init__(self, topics: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = frozenset(topics)
        self._clock = clock
        self._parked: set[TP] = set()
        # Unparked by a probe, with the end it saw: kept out of parking until a fetch has
        # reached that end. The fetch state still says "caught up" until then, and the
        # fetcher adds a resumed partition to its next request only, after the one in
        # flight (a long poll of up to 1.5 s on an idle topic): parked again at the next
        # tick, the partition would miss every request.
        self._woken: dict[TP, int] = {}
        self._probed = clock()

    def parked(self, tp: TP) -> bool:
        return tp in self._parked

    def count(self) -> int:
        return len(self._parked)

    def update(self, states: Mapping[TP, FetchState]) -> None:
        """Park the partitions of `topics` the fetcher has caught up with; forget those no
        longer held (`states`: the fetcher's, of the partitions held now)."""
        self._parked.intersection_update(states)
        self._woken = {tp: end for tp, end in self._woken.items() if tp in states}
        for tp, state in states.items():
            if tp.topic not in self.topics or state.highwater is None:
                continue
            if tp in self._woken:
                if state.highwater < self._woken[tp]:
                    continue  # not fetched since the probe woke it
                del self._woken[tp]
            if state.highwater == state.position:
                self._parked.add(tp)

    def to_probe(self) -> list[TP]:
        """The parked partitions, once PROBE_SECONDS after the last look (else none)."""
        if not self._parked or self._clock() - self._probed < PROBE_SECONDS:
            return []
        self._probed = self._clock()
        return sorted(self._parked)

    def probed(self, ends: Mapping[TP, int], states: Mapping[TP, FetchState]) -> None:
        """Unpark each partition whose end on the broker (`ends`) is past its position."""
        for tp, end in ends.items():
            state = states.get(tp)
            if state is None or end > state.position:
                self._parked.discard(tp)
                self._woken[tp] = end

    def clear(self) -> None:
        """A rebalance: the next assignment is fetched from the start, unparked."""
        self._parked.clear()
        self._woken.clear()
