"""The op agent's step reports: an output is stored, then indexed for render once, and only
then is its step reported, so whoever hears the step (or the job's end) and submits the same
job finds the output retained rather than still claimed."""

from __future__ import annotations

from typing import Any, cast

from pixstream.events import CloudEvent, TaskRequested
from pixstream.plan import Plan
from pixstream.render import RenderedOutput, StepResult
from pixstream.spec import JobSpec
from pixstream.worker.resources import Resources
from pixstream.worker.reuse import Output
from pixstream.worker.steps import _Reporter
from tests.harness import CONTRACT_STEPS


class _Storage:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.calls.append(f"put {key}")


class _Resources:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.storage = _Storage(self.calls)

    async def emit(self, event: CloudEvent, *, key: str) -> None:
        self.calls.append(f"emit {event.type} {event.data['step']}")


async def test_an_output_is_indexed_before_its_step_is_reported() -> None:
    res = _Resources()
    task = TaskRequested(job_id="j" * 32, source_key="raw/x/source.jpg", steps=CONTRACT_STEPS)
    reporter = _Reporter(cast(Resources, res), task, Plan.from_spec(JobSpec(steps=task.steps)))

    async def keep(outputs: dict[str, Output]) -> None:
        res.calls.extend(f"keep {sid}" for sid in outputs)

    out = RenderedOutput(step="thumb", data=b"jpeg", format="jpeg", width=256, height=192)
    await reporter.finished(StepResult(step="thumb", output=out), keep=keep)

    key = Plan.output_key(task.job_id, "thumb", "jpeg")
    assert res.calls == [
        f"put {key}",
        "keep thumb",
        "emit pixstream.step.completed thumb",
    ]


async def test_an_intermediate_step_is_reported_without_indexing() -> None:
    res = _Resources()
    task = TaskRequested(job_id="j" * 32, source_key="raw/x/source.jpg", steps=CONTRACT_STEPS)
    reporter = _Reporter(cast(Resources, res), task, Plan.from_spec(JobSpec(steps=task.steps)))
    kept: list[Any] = []

    async def keep(outputs: dict[str, Output]) -> None:
        kept.append(outputs)

    first = Plan.from_spec(JobSpec(steps=task.steps)).order[0]
    await reporter.finished(StepResult(step=first), keep=keep)
    assert kept == []
    assert res.calls == [f"emit pixstream.step.completed {first}"]
