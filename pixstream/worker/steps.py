"""The op agents, one per `<prefix>.op.<op>` topic: render a task's steps from its source
(decoded once, off the event loop), write the outputs under their deterministic keys, and
report each step on the events topic. A redelivered task rewrites the same objects and
republishes the same event ids, which the tracker drops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pixstream import errors, metrics
from pixstream.db import render_starts
from pixstream.events import (
    STEP_COMPLETED,
    STEP_FAILED,
    TASK_REQUESTED,
    CloudEvent,
    MetadataOutput,
    OutputInfo,
    StepCompleted,
    StepFailed,
    TaskRequested,
    make_event,
)
from pixstream.plan import Plan
from pixstream.render import Rendered
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.handling import Message, Route
from pixstream.worker.resources import Resources
from pixstream.worker.reuse import Renditions

log = logging.getLogger(__name__)

#: Renders of one task that may end without an answer (the renderer or the worker died)
#: before the task is failed with worker_crashed.
MAX_CRASHES = 2


class RenderInterrupted(errors.TransientError):
    """The render process died; the task is tried again once."""


def route(res: Resources, op: str) -> Route:
    """The op agent of `op`: tasks in, outputs and step events out."""

    async def handle(message: Message[TaskRequested]) -> None:
        await render_task(res, message, op)

    async def refuse(message: Message[TaskRequested], exc: errors.PermanentError) -> None:
        # The source itself is at fault (or the task cannot be planned): every step fails.
        task = message.data
        metrics.TASKS.labels(op=op, outcome="failed").inc()
        log.info("task failed: %s", exc.message, extra={"job_id": task.job_id, "code": exc.code})
        ops = {s.id: s.op for s in task.steps}
        await _report(
            res,
            [
                make_event(
                    STEP_FAILED,
                    StepFailed(
                        job_id=task.job_id,
                        step=sid,
                        op=ops[sid],
                        code=exc.code,
                        message=exc.message,
                        run=task.run,
                    ),
                )
                for sid in ops
            ],
            task.job_id,
        )

    return Route(f"op-{op}", frozenset({TASK_REQUESTED}), handle, refuse)


async def render_task(res: Resources, message: Message[TaskRequested], op: str) -> None:
    """Render one task and report every step; raises a classified error for the entry point."""
    task, record = message.data, message.record
    plan = Plan.from_spec(JobSpec(steps=task.steps))
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
        # Outputs already rendered for this tenant are copied; only the rest is rendered.
        async with Renditions(res, message, source, op) as once:
            rendered = await once.render(lambda steps: _counted_render(res, message, source, steps))
            outputs = await _store(res, task.job_id, rendered)
            await once.keep(outputs)
            outputs.update(once.reused)
    except errors.TransientError:
        metrics.TASKS.labels(op=op, outcome="retry").inc()
        raise

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
                        run=task.run,
                    ),
                )
            )
        else:
            events.append(
                make_event(
                    STEP_COMPLETED,
                    StepCompleted(
                        job_id=task.job_id,
                        step=sid,
                        op=step_op,
                        output=outputs.get(sid),
                        run=task.run,
                    ),
                )
            )
    await _report(res, events, task.job_id)
    log.info("task done in %.0f ms", (time.perf_counter() - started) * 1000, extra=extra)


async def _counted_render(
    res: Resources, message: Message[TaskRequested], source: bytes, steps: Sequence[StepSpec]
) -> Rendered:
    """The render itself, counted in PostgreSQL from its start to its answer: only a render
    that never answered (its process or its worker died meanwhile) counts as a crash. Waits on
    S3, Kafka or another task's render do not, so a worker killed during those (the fault
    suite kills one every few seconds) never turns a good task into worker_crashed."""
    task = message.data
    crashes = (
        await res.write_db(
            lambda conn: render_starts.start(conn, message.event.id, task.job_id),
            what="counting a render start",
            job_id=task.job_id,
        )
        - 1
    )
    try:
        if crashes >= MAX_CRASHES:
            raise errors.RendererCrashed(
                f"rendering this task was interrupted {crashes} times (the renderer or its "
                "worker died); given up"
            )
        rendered = await res.renderer.render(
            source, steps, max_pixels=res.settings.max_pixels, max_frames=res.settings.max_frames
        )
    except errors.RendererCrashed as exc:
        if crashes + 1 >= MAX_CRASHES:
            await _concluded(res, message)
            raise
        # Once may be the host (the OOM killer, a recycled child): try again, counted.
        raise RenderInterrupted(exc.message) from exc
    except errors.PermanentError:
        await _concluded(res, message)
        raise
    await _concluded(res, message)
    return rendered


async def _concluded(res: Resources, message: Message[TaskRequested]) -> None:
    await res.write_db(
        lambda conn: render_starts.conclude(conn, message.event.id),
        what="concluding a render",
        job_id=message.data.job_id,
    )


async def _store(
    res: Resources, job_id: str, rendered: Rendered
) -> dict[str, OutputInfo | MetadataOutput]:
    """Write every image output (concurrently); the keys are deterministic, so a retry
    overwrites. A metadata output travels in the events alone: it is small and has no reader
    that wants it as a file."""
    infos: dict[str, OutputInfo | MetadataOutput] = {
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
            res.storage.put(Plan.output_key(job_id, sid, out.format), out.data, _mime(out.format))
            for sid, out in rendered.outputs.items()
        )
    )
    for sid, report in rendered.reports.items():
        infos[sid] = MetadataOutput.model_validate({"data": report.model_dump()})
    return infos


def _mime(fmt: str) -> str:
    return f"image/{fmt}"


async def _report(res: Resources, events: list[CloudEvent], job_id: str) -> None:
    await asyncio.gather(*(res.emit(e, key=job_id) for e in events))
