"""The tracker, the one stateful agent: a Faust table keyed by job id, co-partitioned with
`<prefix>.events`, records finished steps, drops duplicates and emits exactly one terminal
event per run of an accepted job (a retry, `pixstream.job.retried`, opens a new run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pixstream.events import (
    Data,
    JobRequested,
    JobRetried,
    StepCompleted,
    StepFailed,
    make_event,
)
from pixstream.worker.handling import Message
from pixstream.worker.progress import JobProgress
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

Table = MutableMapping[str, Any]


async def track(
    res: Resources,
    table: Table,
    message: Message[Data],
    written: Callable[[str], Awaitable[None]],
) -> None:
    """Apply one event to its job's progress; emit the terminal event when it resolves."""
    data = message.data
    if isinstance(data, JobRequested):
        known = table.get(data.job_id)
        if known is None:
            table[data.job_id] = JobProgress.start(data).to_json()
        elif (progress := JobProgress.model_validate(known)).terminal:
            # Asked again (the reconciler re-drives jobs whose end a consumer may have lost):
            # say the end again. Same deterministic event id, so consumers deduplicate.
            event_type, terminal = progress.outcome(data.job_id)
            await res.emit(make_event(event_type, terminal), key=data.job_id)
        return
    if isinstance(data, JobRetried):
        await _reopen(res, table, data, written)
        return
    if not isinstance(data, StepCompleted | StepFailed):
        return  # terminal events (ours or the planner's) need nothing more

    raw = table.get(data.job_id)
    if raw is None:
        log.warning(
            "step result for an unknown job", extra={"job_id": data.job_id, "step": data.step}
        )
        return
    progress = JobProgress.model_validate(raw)
    if not progress.record(data):
        log.debug("duplicate step result dropped", extra={"job_id": data.job_id, "step": data.step})
        return
    await _settle(res, table, data.job_id, progress, written)


async def _settle(
    res: Resources,
    table: Table,
    job_id: str,
    progress: JobProgress,
    written: Callable[[str], Awaitable[None]],
) -> None:
    """Store the job's progress; when every output has its result, end the run once."""
    if not progress.resolved:
        table[job_id] = progress.to_json()
        return
    event_type, terminal = progress.finish(job_id, time.time())
    table[job_id] = progress.to_json()
    # The changelog must say "terminal" before the world hears it, so a crash right after
    # the emit cannot make a restarted tracker emit it again.
    await written(job_id)
    await res.emit(make_event(event_type, terminal), key=job_id)
    log.info("job %s", event_type.rsplit(".", 1)[1], extra={"job_id": job_id})


async def _reopen(
    res: Resources,
    table: Table,
    retried: JobRetried,
    written: Callable[[str], Awaitable[None]],
) -> None:
    """Start the retry's run; a redelivered retry of a run that already ended says its end
    again (same deterministic id), as a repeated job.requested does."""
    raw = table.get(retried.job_id)
    known = JobProgress.model_validate(raw) if raw is not None else None
    reopened = JobProgress.reopen(known, retried)
    if reopened is None:
        if known is not None and known.terminal and known.run == retried.run:
            event_type, terminal = known.outcome(retried.job_id)
            await res.emit(make_event(event_type, terminal), key=retried.job_id)
        return
    log.info("job reopened for run %d", retried.run, extra={"job_id": retried.job_id})
    # Resolved already when every output was kept: no step result would come to end the run.
    await _settle(res, table, retried.job_id, reopened, written)
