"""The op agents, one per `<prefix>.op.<op>` topic: render a task's steps from its source
(decoded once, off the event loop), write the outputs under their deterministic keys, and
report each step on the events topic. A redelivered task rewrites the same objects and
republishes the same event ids, which the tracker drops."""

from __future__ import annotations

import asyncio
import logging
import time

from pixstream import errors, metrics
from pixstream.events import (
    STEP_COMPLETED,
    STEP_FAILED,
    TASK_REQUESTED,
    CloudEvent,
    OutputInfo,
    StepCompleted,
    StepFailed,
    TaskRequested,
    make_event,
    parse_data,
)
from pixstream.plan import Plan
from pixstream.render import Rendered, render
from pixstream.spec import JobSpec
from pixstream.worker.records import Record
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)


async def handle_task(res: Resources, record: Record, op: str) -> None:
    """Run one task record; never raises for anything a message or a dependency can do."""
    try:
        event = CloudEvent.parse(record.value or b"")
        if event.type != TASK_REQUESTED:
            raise errors.InvalidEvent(f"type: expected {TASK_REQUESTED!r}, got {event.type!r}")
        task = parse_data(event)
        assert isinstance(task, TaskRequested)
        plan = Plan.from_spec(JobSpec(steps=task.steps))
    except errors.PermanentError as exc:  # not a task we can even start
        await res.dead_letter(record, exc, attempts=record.attempt + 1)
        return

    extra = {
        "job_id": task.job_id,
        "op": op,
        "attempt": record.attempt,
        "partition": record.partition,
        "offset": record.offset,
    }
    started = time.perf_counter()
    try:
        source = await res.storage.get(task.source_key, max_bytes=res.settings.max_upload_bytes)
        rendered = await res.in_thread(
            lambda: render(
                source, plan, max_pixels=res.settings.max_pixels, max_frames=res.settings.max_frames
            )
        )
        outputs = await _store(res, task.job_id, rendered)
    except errors.TransientError as exc:
        metrics.TASKS.labels(op=op, outcome="retry").inc()
        await res.retry_later(record, exc)
        return
    except errors.PermanentError as exc:  # the source itself: every step fails with it
        metrics.TASKS.labels(op=op, outcome="failed").inc()
        log.info("task failed: %s", exc.message, extra={**extra, "code": exc.code})
        await _report(
            res,
            [
                make_event(
                    STEP_FAILED,
                    StepFailed(
                        job_id=task.job_id,
                        step=s,
                        op=plan.steps[s].spec.op,
                        code=exc.code,
                        message=exc.message,
                    ),
                )
                for s in plan.order
            ],
            task.job_id,
        )
        return
    except Exception as exc:  # a bug: park it with its context instead of losing it
        log.exception("task crashed", extra=extra)
        await res.dead_letter(record, exc, attempts=record.attempt + 1)
        return

    metrics.OP_SECONDS.labels(op=op).observe(time.perf_counter() - started)
    metrics.TASKS.labels(op=op, outcome="completed" if rendered.ok else "failed").inc()
    events = []
    for sid in plan.order:
        step_op = plan.steps[sid].spec.op
        if (failure := rendered.failures.get(sid)) is not None:
            events.append(
                make_event(
                    STEP_FAILED,
                    StepFailed(
                        job_id=task.job_id,
                        step=sid,
                        op=step_op,
                        code=failure.code,
                        message=failure.message,
                    ),
                )
            )
        else:
            events.append(
                make_event(
                    STEP_COMPLETED,
                    StepCompleted(
                        job_id=task.job_id, step=sid, op=step_op, output=outputs.get(sid)
                    ),
                )
            )
    await _report(res, events, task.job_id)
    log.info("task done in %.0f ms", (time.perf_counter() - started) * 1000, extra=extra)


async def _store(res: Resources, job_id: str, rendered: Rendered) -> dict[str, OutputInfo]:
    """Write every output (concurrently); the keys are deterministic, so a retry overwrites."""
    infos = {
        sid: OutputInfo(
            key=Plan.output_key(job_id, sid, out.format),
            format=out.format,
            width=out.width,
            height=out.height,
            bytes=len(out.data),
        )
        for sid, out in rendered.outputs.items()
    }
    await asyncio.gather(
        *(
            res.storage.put(infos[sid].key, out.data, f"image/{out.format}")
            for sid, out in rendered.outputs.items()
        )
    )
    return infos


async def _report(res: Resources, events: list[CloudEvent], job_id: str) -> None:
    await asyncio.gather(*(res.emit(e, key=job_id) for e in events))
