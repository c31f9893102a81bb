"""A worker restarted right after a SIGKILL, again and again (issue 9): every job whose request
was on Kafka before the kill ends soon after the restart, none waits for the stall timer.

Before `worker/recovery.py` about one run in two left a job unplanned for good: Faust ends a
rebalance by seeking to the commit and then clearing the agents' queues, so what the fetcher
delivered in between was dropped while the consumer's position had moved past it. The jobs
here are few and the partitions quiet, so nothing later on the partition exposed the gap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pixstream.events import JOB_COMPLETED
from pixstream.settings import Settings
from tests.e2e.conftest import running_pipeline
from tests.harness import TERMINAL, jpeg_bytes, submit

#: In `make chaos`, not `make test`: it once failed one round of eight while the fault suite
#: and the whole test suite shared the 2 cores (a job on partition 0 never planned). The
#: likely path, a batch delivered after the re-seek moving Faust's read offset past it, is
#: closed (flow stopped around the seeks, see `commits.read_again_from_commit`) and 3 runs of
#: 10 rounds passed under the same load since; a chance failure would still fail all of CI.
pytestmark = [
    pytest.mark.fault_run,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.s3,
    pytest.mark.postgres,
]

ROUNDS = 10
#: Far below the reconciler's stall timer (300 s): the new member waits out the dead one's
#: 10 s session, then Faust recovers the table; a lost message would wait for the timer.
SETTLE_SECONDS = 60.0


async def test_jobs_sent_before_a_kill_end_soon_after_an_immediate_restart(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    async with running_pipeline(services, template_database, tmp_path) as pipeline:
        for round_ in range(ROUNDS):
            jobs = [await submit(pipeline.settings, jpeg_bytes((1600, 1200))) for _ in range(3)]
            # Killed at varied points: before the requests are read, while they are
            # planned, rendered, or after they ended.
            await asyncio.sleep(0.3 + 0.4 * (round_ % 6))
            pipeline.worker.kill()
            pipeline.restart_worker()
            await pipeline.watcher.wait_terminal(jobs, within=SETTLE_SECONDS)
            for job in jobs:
                # One terminal event id (a redelivery may republish that same event).
                ends = {(e.id, e.type) for e in pipeline.watcher.of_type(job, *TERMINAL)}
                assert [kind for _, kind in ends] == [JOB_COMPLETED], (round_, job, ends)
