"""The op agents, one per `<prefix>.op.<op>` topic: say the task started, render its steps
from its source (decoded once, in a render process), and as each step finishes write its
output under its deterministic key and report the step on the events topic, while the next
step renders. A redelivered task rewrites the same objects and republishes the same event
ids, which the tracker drops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from pixstream import errors, metrics
from pixstream.db import render_starts
from pixstream.events import (
    STEP_COMPLETED,
    STEP_FAILED,
    TASK_REQUESTED,
    TASK_STARTED,
    CloudEvent,
    MetadataOutput,
    OutputInfo,
    StepCompleted,
    StepFailed,
    TaskRequested,
    TaskStarted,
    make_event,
)
from pixstream.plan import Plan
from pixstream.render import Rendered, RenderedOutput, StepResult
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.handling import Message, Route
from pixstream.worker.renderpool import OnStep
from pixstream.worker.resources import Resources
from pixstream.worker.reuse import Output, Renditions

log = logging.getLogger(__name__)

#: Renders of one task that may end without an answer (the renderer or the worker died)
#: before the task is failed with worker_crashed.
MAX_CRASHES = 2


class RenderInterrupted(errors.TransientError):
    """The render process died; the task is tried again once."""


def route(res: Resources, op: str) -> Route:
    """The op agent of `op`: tasks in, outputs and step events out."""

    # Copies of one task taken here at once share the first copy's render. A job request read
    # again after a restart is planned again, and a rebalance reads again what an agent holds:
    # each makes a copy with the same event id. A second render would count as a second start
    # of the task, and starts in flight look like crashes to the next copy (`_counted_render`):
    # a good job then failed worker_crashed in the fault suite.
    in_flight: dict[str, asyncio.Event] = {}

    async def handle(message: Message[TaskRequested]) -> None:
        task_id = message.event.id
        if (first := in_flight.get(task_id)) is not None:
            # Its outcome is this copy's: reported by it, parked in a retry tier by it, or
            # (given back unfinished) read again from its own record, which holds the
            # partition's commit until it is handled.
            await first.wait()
            return
        in_flight[task_id] = done = asyncio.Event()
        try:
            await render_task(res, message, op)
        finally:
            del in_flight[task_id]
            done.set()

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
    """Render one task and report every step as it finishes; raises a classified error for
    the entry point."""
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
    steps = _Reporter(res, task, plan)
    try:
        # Sent while the source is read: both are round trips, and nothing waits on the first.
        _, source = await asyncio.gather(
            res.emit(make_event(TASK_STARTED, steps.started(op)), key=task.job_id),
            res.storage.get(task.source_key, max_bytes=res.settings.max_upload_bytes),
        )
        # Outputs already rendered for this tenant are copied; only the rest is rendered.
        async with Renditions(res, message, source, op) as once:
            await steps.reused(once.reused, {s.id for s in once.steps})

            async def finished(result: StepResult) -> None:
                await steps.finished(result, keep=once.keep)

            try:
                await once.render(
                    lambda todo: _counted_render(res, message, source, todo, finished)
                )
            except errors.PermanentError as exc:
                if not exc.fails_job:
                    raise
                # The render as a whole failed (undecodable, timed out, crashed twice):
                # the steps it finished stand, the others fail with its error.
                log.info("task failed: %s", exc.message, extra={**extra, "code": exc.code})
                await steps.fail_rest(exc)
    except errors.TransientError:
        metrics.TASKS.labels(op=op, outcome="retry").inc()
        raise

    metrics.OP_SECONDS.labels(op=op).observe(time.perf_counter() - started)
    metrics.TASKS.labels(op=op, outcome="failed" if steps.failed else "completed").inc()
    log.info("task done in %.0f ms", (time.perf_counter() - started) * 1000, extra=extra)


class _Reporter:
    """One delivery of a task's step reports, in the order the steps are done: each output
    written to its key, then the step's event published, before the next result is taken."""

    def __init__(self, res: Resources, task: TaskRequested, plan: Plan) -> None:
        self._res = res
        self._task = task
        self._plan = plan
        self.reported: set[str] = set()
        self.failed = False

    def started(self, op: str) -> TaskStarted:
        task = self._task
        return TaskStarted(
            job_id=task.job_id, op=op, steps=[s.id for s in task.steps], run=task.run
        )

    async def reused(
        self, reused: dict[str, OutputInfo | MetadataOutput], rendered: set[str]
    ) -> None:
        """Report the steps the render will not run: the reused outputs and the steps only
        they needed. At once: the tracker takes a job's step results in any order."""
        await asyncio.gather(
            *(
                self._completed(sid, reused.get(sid))
                for sid in self._plan.order
                if sid not in rendered
            )
        )

    async def finished(
        self, result: StepResult, keep: Callable[[dict[str, Output]], Awaitable[None]]
    ) -> None:
        """One rendered step's result (the render's `on_step`). Its output is indexed
        (`keep`) before its step is reported, so a job submitted once this one ended finds
        it retained, not still being rendered."""
        sid = result.step
        if result.failure is not None:
            await self._failed(sid, result.failure.code, result.failure.message)
            return
        output: OutputInfo | MetadataOutput | None = None
        if result.output is not None:
            output = await self._store(result.output)
        elif result.report is not None:
            # A metadata output travels in the events alone: it is small and has no reader
            # that wants it as a file.
            output = MetadataOutput.model_validate({"data": result.report.model_dump()})
        if output is not None:
            await keep({sid: output})
        await self._completed(sid, output)

    async def fail_rest(self, exc: errors.PermanentError) -> None:
        for sid in self._plan.order:
            if sid not in self.reported:
                await self._failed(sid, exc.code, exc.message)

    async def _store(self, out: RenderedOutput) -> OutputInfo:
        # The key is deterministic, so a redelivered task overwrites.
        key = Plan.output_key(self._task.job_id, out.step, out.format)
        await self._res.storage.put(key, out.data, _mime(out.format))
        return OutputInfo(
            key=key, format=out.format, width=out.width, height=out.height, bytes=len(out.data)
        )

    async def _completed(self, sid: str, output: OutputInfo | MetadataOutput | None) -> None:
        task = self._task
        op = self._plan.steps[sid].spec.op
        completed = StepCompleted(job_id=task.job_id, step=sid, op=op, output=output, run=task.run)
        await self._emit(sid, make_event(STEP_COMPLETED, completed))

    async def _failed(self, sid: str, code: str, message: str) -> None:
        task = self._task
        op = self._plan.steps[sid].spec.op
        failed = StepFailed(
            job_id=task.job_id, step=sid, op=op, code=code, message=message, run=task.run
        )
        self.failed = True
        await self._emit(sid, make_event(STEP_FAILED, failed))

    async def _emit(self, sid: str, event: CloudEvent) -> None:
        await self._res.emit(event, key=self._task.job_id)
        self.reported.add(sid)


async def _counted_render(
    res: Resources,
    message: Message[TaskRequested],
    source: bytes,
    steps: Sequence[StepSpec],
    on_step: OnStep,
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
            source,
            steps,
            max_pixels=res.settings.max_pixels,
            max_frames=res.settings.max_frames,
            on_step=on_step,
        )
    except errors.RendererCrashed as exc:
        if crashes + 1 >= MAX_CRASHES:
            await _concluded(res, message)
            raise
        # Once may be the host (the OOM killer, a recycled child): try again, counted.
        raise RenderInterrupted(exc.message) from exc
    except (errors.PermanentError, errors.TransientError):
        # Answered: failed as a whole, or a finished step could not be stored or reported.
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


def _mime(fmt: str) -> str:
    return f"image/{fmt}"


async def _report(res: Resources, events: list[CloudEvent], job_id: str) -> None:
    await asyncio.gather(*(res.emit(e, key=job_id) for e in events))
