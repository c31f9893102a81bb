"""Run a whole plan on one source: decode once, pass images between steps, encode the outputs.

Pure and thread-safe (no shared state), so the worker can run it in a thread pool or in the
render pool's processes. A step that fails permanently fails alone: its descendants are
skipped, other branches complete. A step whose output would be over the pixel budget fails
with `too_many_pixels` before Pillow allocates it. A metadata step (analyze) leaves a report
instead of an encoded output. `on_step` hears of each step the moment it is done, so a caller
can store and announce it while the next step renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image
from pydantic import BaseModel

from pixstream import errors
from pixstream.ops import codec
from pixstream.ops.operation import Subject
from pixstream.plan import Plan
from pixstream.spec import SOURCE

SKIPPED_DEPENDENCY = "skipped_dependency"


@dataclass(frozen=True)
class RenderedOutput:
    """An encoded output of the job."""

    step: str
    data: bytes
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class StepFailure:
    """A step that produced nothing, and why."""

    step: str
    code: str
    message: str


@dataclass(frozen=True)
class Rendered:
    """What render() made of a job: one entry per output, one per failed or skipped step."""

    source_format: str
    source_size: tuple[int, int]  # oriented, before any draft reduction
    frames: int
    outputs: dict[str, RenderedOutput] = field(default_factory=dict)
    reports: dict[str, BaseModel] = field(default_factory=dict)  # metadata steps' outputs
    failures: dict[str, StepFailure] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def result(self, step: str) -> StepResult:
        """What is known of `step` (nothing but its id for an intermediate step that ran)."""
        return StepResult(
            step, self.outputs.get(step), self.reports.get(step), self.failures.get(step)
        )


@dataclass(frozen=True)
class StepResult:
    """One step done: its encoded output, its report or its failure (all None for an
    intermediate step, whose image only its readers use)."""

    step: str
    output: RenderedOutput | None = None
    report: BaseModel | None = None
    failure: StepFailure | None = None


def render(
    source: bytes,
    plan: Plan,
    *,
    max_pixels: int,
    max_frames: int,
    on_step: Callable[[StepResult], None] | None = None,
) -> Rendered:
    """Render every output of `plan`; decode errors raise (the whole job fails with them).

    `max_pixels` bounds the source (every frame and their sum) and each step's output.
    `on_step` is called with each step's result as soon as it is known, in plan order.
    """
    decoded = codec.decode(
        source,
        max_pixels=max_pixels,
        max_frames=max_frames,
        draft=plan.draft_size,
        read_exif=plan.describes,
    )
    result = Rendered(decoded.format, decoded.full_size, len(decoded.frames))
    images: dict[str, list[Image.Image]] = {SOURCE: decoded.frames}
    # Drop an intermediate image as soon as its last reader has run: memory stays bounded.
    readers = {sid: len(plan.children(sid)) for sid in (SOURCE, *plan.order)}
    for sid in plan.order:
        step = plan.steps[sid]
        parent = step.input
        if parent in result.failures:
            result.failures[sid] = StepFailure(
                sid, SKIPPED_DEPENDENCY, f"not run: step '{parent}' failed"
            )
        else:
            try:
                inputs = images[parent]
                step.check_budget(inputs[0].size, frames=len(inputs), max_pixels=max_pixels)
                if step.op.describe is not None:  # a leaf: nothing reads it
                    subject = _subject(inputs, parent, source, decoded)
                    result.reports[sid] = step.op.describe(subject, step.params)
                else:
                    frames = step.op.run(inputs, step.params)
                    if readers[sid]:
                        images[sid] = frames
                    else:
                        result.outputs[sid] = _encode(plan, sid, frames, decoded)
            except errors.PermanentError as exc:
                result.failures[sid] = StepFailure(sid, exc.code, exc.message)
        if on_step is not None:
            on_step(result.result(sid))
        readers[parent] -= 1
        if not readers[parent]:
            images.pop(parent, None)
    return result


def _subject(
    frames: list[Image.Image], parent: str, source: bytes, decoded: codec.Decoded
) -> Subject:
    # The source's frames may be a JPEG draft: its size is the one before the reduction.
    size = decoded.full_size if parent == SOURCE else frames[0].size
    return Subject(frames, size, source, decoded.format, decoded.exif)


def _encode(
    plan: Plan, step_id: str, frames: list[Image.Image], decoded: codec.Decoded
) -> RenderedOutput:
    encoding = plan.encoding(step_id, decoded.format, animated=decoded.animated)
    data = codec.encode(
        frames,
        encoding.format,
        quality=encoding.quality,
        lossless=encoding.lossless,
        speed=encoding.speed,
        durations=decoded.durations,
        loop=decoded.loop,
    )
    width, height = frames[0].size
    return RenderedOutput(step_id, data, encoding.format, width, height)
