"""A job's progress as the tracker keeps it: pure state, stored as JSON in the Faust table.

Applying the same step result twice changes nothing, and a job becomes terminal exactly once
per run: that is what makes redelivery harmless. A retry reopens a terminal job as a new run
(`reopen`); from then on only that run's results count, so a late result of an older run can
neither resolve the new run nor end it twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    ErrorInfo,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobRetried,
    Output,
    StepCompleted,
    StepFailed,
)
from pixstream.plan import Plan
from pixstream.spec import JobSpec


class JobProgress(BaseModel):
    """What the tracker knows of one job."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[str]
    webhook_url: str | None = None
    done: dict[str, Output | None] = Field(default_factory=dict)
    failed: dict[str, ErrorInfo] = Field(default_factory=dict)
    terminal: bool = False
    finished_at: float | None = None  # epoch seconds, when it turned terminal (for pruning)
    run: int = 0  # entries from before retries existed have none: they are run 0

    @classmethod
    def reopen(cls, known: JobProgress | None, retried: JobRetried) -> JobProgress | None:
        """The progress of the run `retried` starts, or None when it changes nothing (a
        redelivered or an older retry).

        Built from the event alone: the kept outputs are done, the rest is open, and results
        of older runs are dropped (the table may have pruned the job since it ended)."""
        if known is not None and known.run >= retried.run:
            return None
        plan = Plan.from_spec(JobSpec(steps=retried.steps, webhook_url=retried.webhook_url))
        return cls(
            outputs=list(plan.outputs),
            webhook_url=retried.webhook_url,
            done={sid: out for sid, out in retried.outputs.items() if sid in plan.outputs},
            run=retried.run,
        )

    @classmethod
    def start(cls, request: JobRequested) -> JobProgress:
        plan = Plan.from_spec(JobSpec(steps=request.steps, webhook_url=request.webhook_url))
        return cls(outputs=list(plan.outputs), webhook_url=request.webhook_url)

    def record(self, result: StepCompleted | StepFailed) -> bool:
        """Apply a step's result; False when it was already known (a duplicate), too late, or
        of another run."""
        if result.run != self.run:
            return False
        if self.terminal or result.step in self.done or result.step in self.failed:
            return False
        if isinstance(result, StepCompleted):
            self.done[result.step] = result.output
        else:
            self.failed[result.step] = ErrorInfo(
                step=result.step, code=result.code, message=result.message
            )
        return True

    @property
    def resolved(self) -> bool:
        return all(s in self.done or s in self.failed for s in self.outputs)

    def finish(self, job_id: str, now: float) -> tuple[str, JobCompleted | JobFailed]:
        """Mark terminal at `now` and return the one terminal event's type and data."""
        self.terminal = True
        self.finished_at = now
        return self.outcome(job_id)

    def outcome(self, job_id: str) -> tuple[str, JobCompleted | JobFailed]:
        """The terminal event's type and data, from what is recorded (pure)."""
        outputs = {s: out for s in self.outputs if (out := self.done.get(s)) is not None}
        if not self.failed:
            return JOB_COMPLETED, JobCompleted(
                job_id=job_id, outputs=outputs, webhook_url=self.webhook_url, run=self.run
            )
        return JOB_FAILED, JobFailed(
            job_id=job_id,
            errors=list(self.failed.values()),
            outputs=outputs,
            webhook_url=self.webhook_url,
            run=self.run,
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
