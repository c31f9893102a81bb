"""The end of a rebalance: every stream partition is read again from the group's commit
after Faust has emptied the agents' queues, not before.

faust-streaming 0.15.3 ends a rebalance (`Recovery.on_recovery_completed`, and
`_resume_streams` when there is nothing to recover) with, in this order: resume the stream
partitions, seek them to the committed offsets, then `app.flow_control.resume()`, which
clears every agent's queue (`FlowControlQueue(clear_on_resume=True)`), whether or not flow
was suspended. The fetcher runs during the seek (recovery had resumed flow to read the
changelogs), so what it delivered between the seek and the clear is thrown away while the
consumer's position has moved past it. Nothing reads those messages again until the next
rebalance: the commit ledger (`commits`) holds the commit before the first of them, so none
is lost, but the jobs wait, and when no later message arrives on the partition the ledger
cannot even tell a message is missing. Seen as a job never planned after a worker restarted
right after a SIGKILL (tests/e2e/test_restarts.py); this is the race of faust-streaming#596,
whose upstream reading is about the acked-offset gap it leaves.

Seeking once more, after the clear, reads from the commit whatever was thrown away. What a
handler finished since the assignment is skipped (`CommitLedger.already_handled`); what was
handled before the rebalance, or is still being handled, is read twice, which every handler
tolerates (deterministic event ids, idempotent writes).
"""

from __future__ import annotations

from typing import cast

from faust.tables import TableManager
from faust.tables.recovery import Recovery

from pixstream.worker.commits import LedgerConsumer


class SeekAfterClearRecovery(Recovery):
    """Faust's recovery, seeking the stream partitions again once their queues were cleared."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await super().on_recovery_completed(generation_id)
        await self._read_again_from_commit(generation_id)

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await super()._resume_streams(generation_id)
        await self._read_again_from_commit(generation_id)

    async def _read_again_from_commit(self, generation_id: int) -> None:
        consumer = self.app.consumer
        if self.app.consumer_generation_id != generation_id or not consumer.assignment():
            return  # rebalancing again: that rebalance ends with its own seek
        self.log.info("Reading the stream partitions again from the group's commit.")
        await self._wait(
            cast(LedgerConsumer, consumer).read_again_from_commit(),
            timeout=self.app.conf.broker_request_timeout,
        )


class WorkerTableManager(TableManager):
    """Faust's table manager with `SeekAfterClearRecovery` as its recovery."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekAfterClearRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery
