"""What a retry of a failed job runs again: pure, so the ingress that accepts the retry and the
planner that plans it agree on the steps.

Only outputs are stored, so an output that did not succeed is rendered again with every step
on its path from the source (an intermediate step has no object to start from), and an output
that succeeded is kept: it is on no other output's path, so nothing re-renders it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pixstream.plan import Plan
from pixstream.spec import JobSpec, StepSpec


def rerun_steps(steps: Sequence[StepSpec], kept: Collection[str]) -> list[StepSpec]:
    """The steps of `steps` (a job's whole spec) a retry runs when the outputs in `kept`
    stay: the paths of the other outputs, in spec order; [] when every output is kept."""
    plan = Plan.from_spec(JobSpec(steps=list(steps)))
    needed: set[str] = set()
    for output in plan.outputs:
        if output not in kept:
            needed.update(plan.path(output))
    return [step for step in steps if step.id in needed]


def kept_outputs(steps: Sequence[StepSpec], made: Collection[str]) -> list[str]:
    """Which of the steps in `made` (those with a recorded output) are outputs of the job, in
    spec order: what a retry keeps."""
    outputs = Plan.from_spec(JobSpec(steps=list(steps))).outputs
    return [sid for sid in outputs if sid in made]
