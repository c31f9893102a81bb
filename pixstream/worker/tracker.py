"""The tracker, the one stateful agent: a Faust table keyed by job id, co-partitioned with
`<prefix>.events`, records finished steps, drops duplicates and emits exactly one terminal
event per accepted job."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pixstream.events import (
    Data,
    JobRequested,
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
    flush_changelog: Callable[[], Awaitable[None]],
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
    if not progress.resolved:
        table[data.job_id] = progress.to_json()
        return
    event_type, terminal = progress.finish(data.job_id, time.time())
    table[data.job_id] = progress.to_json()
    # The changelog must say "terminal" before the world hears it, so a crash right after
    # the emit cannot make a restarted tracker emit it again.
    await flush_changelog()
    await res.emit(make_event(event_type, terminal), key=data.job_id)
    log.info("job %s", event_type.rsplit(".", 1)[1], extra={"job_id": data.job_id})
