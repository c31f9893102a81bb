"""A retry's pure parts: which steps it runs, how the tracker reopens a failed job for a new
run, and why each run ends with one terminal event of its own id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    JOB_RETRIED,
    STEP_COMPLETED,
    STEP_FAILED,
    CloudEvent,
    Data,
    JobRequested,
    JobRetried,
    OutputInfo,
    SourceKey,
    StepCompleted,
    StepFailed,
    event_id_for,
    make_event,
    parse_data,
)
from pixstream.redelivery import Record
from pixstream.rerun import kept_outputs, rerun_steps
from pixstream.spec import StepSpec
from pixstream.worker.handling import Message
from pixstream.worker.progress import JobProgress
from pixstream.worker.tracker import track

pytestmark = pytest.mark.unit

STEPS = [
    StepSpec(id="web", op="resize", params={"width": 1024}),
    StepSpec(id="mark", op="watermark", params={"text": "x"}, input="web"),
    StepSpec(id="webp", op="convert", params={"format": "webp"}, input="mark"),
    StepSpec(id="thumb", op="thumbnail", params={"size": 256}),
    StepSpec(id="info", op="analyze", params={}),
]
OUTPUTS = ["webp", "thumb", "info"]


def _out(step: str) -> OutputInfo:
    return OutputInfo(key=f"processed/j1/{step}.jpg", format="jpeg", width=8, height=8, bytes=3)


def _retried(run: int = 1, kept: tuple[str, ...] = ("thumb",)) -> JobRetried:
    return JobRetried(
        job_id="j1",
        run=run,
        steps=STEPS,
        source_key="raw/j1/source.jpg",
        outputs={s: _out(s) for s in kept},
    )


# -- which steps a retry runs -------------------------------------------------------------------
def test_a_failed_output_runs_again_with_every_step_on_its_path() -> None:
    assert [s.id for s in rerun_steps(STEPS, {"thumb", "info"})] == ["web", "mark", "webp"]


def test_kept_outputs_are_not_run_and_nothing_is_left_when_all_are_kept() -> None:
    assert [s.id for s in rerun_steps(STEPS, {"webp"})] == ["thumb", "info"]
    assert rerun_steps(STEPS, set(OUTPUTS)) == []
    assert [s.id for s in rerun_steps(STEPS, set())] == [s.id for s in STEPS]


def test_only_outputs_are_kept_not_intermediate_steps() -> None:
    # An intermediate step has no object: "web" being recorded keeps nothing.
    assert kept_outputs(STEPS, {"web", "thumb", "nope"}) == ["thumb"]


# -- ids: one terminal event per run --------------------------------------------------------------
def test_run_zero_keeps_the_ids_of_before_and_a_retry_has_its_own() -> None:
    assert event_id_for("j1", JOB_FAILED) == "j1.job.failed"
    assert event_id_for("j1", JOB_FAILED, run=1) == "j1.r1.job.failed"
    assert event_id_for("j1", STEP_COMPLETED, "web", run=2) == "j1.r2.step.completed.web"
    assert make_event(JOB_RETRIED, _retried(run=3)).id == "j1.r3.job.retried"


def test_events_from_before_runs_existed_are_run_zero() -> None:
    event = make_event(STEP_COMPLETED, StepCompleted(job_id="j1", step="web", op="resize"))
    raw = {k: v for k, v in event.data.items() if k != "run"}
    data = parse_data(event.model_copy(update={"data": raw}))
    assert isinstance(data, StepCompleted)
    assert data.run == 0


# -- the tracker's progress ---------------------------------------------------------------------
def _failed_run_zero() -> JobProgress:
    progress = JobProgress.start(
        JobRequested(job_id="j1", steps=STEPS, source=SourceKey(key="raw/j1/source.jpg"))
    )
    progress.record(StepCompleted(job_id="j1", step="web", op="resize"))
    progress.record(StepFailed(job_id="j1", step="mark", op="watermark", code="c", message="m"))
    progress.record(StepFailed(job_id="j1", step="webp", op="convert", code="s", message="m"))
    progress.record(StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb")))
    progress.record(StepCompleted(job_id="j1", step="info", op="analyze", output=_out("info")))
    assert progress.resolved
    progress.finish("j1", 1.0)
    return progress


def test_reopen_drops_the_results_of_older_runs_and_keeps_the_kept_outputs() -> None:
    reopened = JobProgress.reopen(_failed_run_zero(), _retried(kept=("thumb", "info")))
    assert reopened is not None
    assert (reopened.run, reopened.terminal, reopened.finished_at) == (1, False, None)
    assert reopened.failed == {}
    assert set(reopened.done) == {"thumb", "info"}
    assert reopened.outputs == OUTPUTS
    assert not reopened.resolved


def test_a_redelivered_or_older_retry_reopens_nothing() -> None:
    reopened = JobProgress.reopen(_failed_run_zero(), _retried(run=1))
    assert reopened is not None
    assert JobProgress.reopen(reopened, _retried(run=1)) is None
    later = JobProgress.reopen(reopened, _retried(run=2))
    assert later is not None
    assert later.run == 2


def test_a_pruned_job_reopens_from_the_retry_alone() -> None:
    reopened = JobProgress.reopen(None, _retried(kept=("thumb", "info")))
    assert reopened is not None
    assert set(reopened.done) == {"thumb", "info"}


def test_results_of_another_run_neither_resolve_nor_end_the_new_run() -> None:
    reopened = JobProgress.reopen(_failed_run_zero(), _retried(kept=("thumb", "info")))
    assert reopened is not None
    late = StepCompleted(job_id="j1", step="webp", op="convert", output=_out("webp"))
    assert not reopened.record(late)  # run 0's, redelivered
    assert not reopened.resolved
    assert reopened.record(late.model_copy(update={"run": 1}))
    assert reopened.resolved
    kind, data = reopened.finish("j1", 2.0)
    assert kind == JOB_COMPLETED
    assert data.run == 1
    assert set(data.outputs) == set(OUTPUTS)  # the kept ones are listed with the new one
    assert data.outputs["thumb"] == _out("thumb")


def test_progress_stored_before_runs_existed_is_run_zero() -> None:
    stored = _failed_run_zero().to_json()
    del stored["run"]
    assert JobProgress.model_validate(stored).run == 0


# -- the tracker agent, end to end on values ----------------------------------------------------
@dataclass
class Emitted:
    """Stands in for the worker's Resources: what the tracker emits."""

    events: list[CloudEvent] = field(default_factory=list)

    async def emit(self, event: CloudEvent, *, key: str) -> None:
        self.events.append(event)

    def terminal(self) -> list[CloudEvent]:
        return [e for e in self.events if e.type in (JOB_COMPLETED, JOB_FAILED)]


async def _feed(res: Emitted, table: dict[str, Any], type_: str, data: Data) -> None:
    event = make_event(type_, data)
    record = Record("events", 0, 0, b"j1", event.to_bytes(), ())

    async def written(job_id: str) -> None:  # the changelog write is on the broker
        return None

    await track(res, table, Message(record, event, parse_data(event)), written)  # type: ignore[arg-type]


async def test_each_run_ends_once_with_its_own_terminal_event() -> None:
    res, table = Emitted(), dict[str, Any]()
    request = JobRequested(job_id="j1", steps=STEPS, source=SourceKey(key="raw/j1/source.jpg"))
    await _feed(res, table, JOB_REQUESTED, request)
    run0 = [
        StepCompleted(job_id="j1", step="web", op="resize"),
        StepFailed(job_id="j1", step="mark", op="watermark", code="c", message="m"),
        StepFailed(job_id="j1", step="webp", op="convert", code="s", message="m"),
        StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb")),
        StepCompleted(job_id="j1", step="info", op="analyze", output=_out("info")),
    ]
    for result in run0:
        await _feed(
            res, table, STEP_FAILED if isinstance(result, StepFailed) else STEP_COMPLETED, result
        )
    assert [e.id for e in res.terminal()] == ["j1.job.failed"]

    retried = _retried(kept=("thumb", "info"))
    await _feed(res, table, JOB_RETRIED, retried)
    await _feed(res, table, STEP_FAILED, run0[2])  # run 0's, late: dropped
    for result in run0[:1]:
        await _feed(res, table, STEP_COMPLETED, result.model_copy(update={"run": 1}))
    assert len(res.terminal()) == 1  # the new run is open
    for step, op in (("mark", "watermark"), ("webp", "convert")):
        output = _out(step) if step == "webp" else None
        done = StepCompleted(job_id="j1", step=step, op=op, output=output, run=1)
        await _feed(res, table, STEP_COMPLETED, done)
        await _feed(res, table, STEP_COMPLETED, done)  # redelivered
    assert [e.id for e in res.terminal()] == ["j1.job.failed", "j1.r1.job.completed"]
    assert res.terminal()[1].data["run"] == 1

    # A redelivered retry of the run that ended says the same end again (same id).
    await _feed(res, table, JOB_RETRIED, retried)
    assert [e.id for e in res.terminal()][1:] == ["j1.r1.job.completed"] * 2


async def test_a_retry_that_keeps_every_output_ends_at_once() -> None:
    res, table = Emitted(), dict[str, Any]()
    await _feed(res, table, JOB_RETRIED, _retried(kept=tuple(OUTPUTS)))
    assert [e.id for e in res.terminal()] == ["j1.r1.job.completed"]
