"""The DAG planner: a validated spec as roots, children, outputs, order, formats and keys.

Pure and immutable, so the worker's planner, the op agents and render() all agree on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from pixstream import errors
from pixstream.ops import OPERATIONS, Operation
from pixstream.ops.codec import DEFAULT_QUALITY, EXTENSIONS
from pixstream.ops.pixels import ConvertParams
from pixstream.spec import SOURCE, JobSpec, StepSpec, validate_steps

Size = tuple[int, int]

#: The output format of a step with no `convert` on its path, by source format.
#: HEIF photos become JPEG: what every browser shows (and what their camera would otherwise write).
_NATIVE_OUTPUT = {
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "tiff": "png",
    "heif": "jpeg",
}


@dataclass(frozen=True)
class Encoding:
    """How an output is encoded."""

    format: str
    quality: int | None = None
    lossless: bool = False
    speed: int | None = None


@dataclass(frozen=True)
class PlannedStep:
    """A step with its operation resolved and its params validated."""

    spec: StepSpec
    op: Operation[Any]
    params: BaseModel

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def input(self) -> str:
        return self.spec.input

    def output_size(self, input_size: Size) -> Size:
        """The size this step makes of an input of `input_size`, computed without pixels."""
        return self.op.output_size(self.params, *input_size)

    def check_budget(self, input_size: Size, *, frames: int, max_pixels: int) -> Size:
        """The output size; TooManyPixels when its frames together exceed `max_pixels`."""
        width, height = self.output_size(input_size)
        if width * height * frames > max_pixels:
            each = f" x {frames} frames" if frames > 1 else ""
            raise errors.TooManyPixels(
                f"step '{self.id}': its output would be {width}x{height}{each} = "
                f"{width * height * frames} pixels; the limit is {max_pixels}"
            )
        return width, height


@dataclass(frozen=True)
class Plan:
    """The steps of a job as a DAG rooted at the source image."""

    steps: Mapping[str, PlannedStep]  # in spec order
    order: tuple[str, ...]  # topological: every step after its input
    roots: tuple[str, ...]  # steps reading the source
    outputs: tuple[str, ...]  # steps no other step reads, in spec order
    _children: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Plan:
        """Build the plan; re-validates, so a spec from any producer is safe to plan."""
        validate_steps(spec.steps)
        steps = {
            s.id: PlannedStep(s, OPERATIONS[s.op], OPERATIONS[s.op].parse(s.params))
            for s in spec.steps
        }
        children: dict[str, list[str]] = {SOURCE: [], **{sid: [] for sid in steps}}
        for step in steps.values():
            children[step.input].append(step.id)
        order: list[str] = []
        frontier = list(children[SOURCE])
        while frontier:  # breadth-first from the source: spec order within a level
            sid = frontier.pop(0)
            order.append(sid)
            frontier.extend(children[sid])
        return cls(
            steps=MappingProxyType(steps),
            order=tuple(order),
            roots=tuple(children[SOURCE]),
            outputs=tuple(sid for sid in steps if not children[sid]),
            _children=MappingProxyType({k: tuple(v) for k, v in children.items()}),
        )

    @property
    def describes(self) -> bool:
        """Some step is a metadata op (analyze): the source's EXIF subset is worth reading."""
        return any(not step.op.makes_image for step in self.steps.values())

    def children(self, step_id: str) -> tuple[str, ...]:
        """The steps taking `step_id` (or "source") as input, in spec order."""
        try:
            return self._children[step_id]
        except KeyError:
            raise errors.InvalidSpec(f"no step '{step_id}' in this job") from None

    def path(self, step_id: str) -> list[str]:
        """The steps from the source to `step_id`, both ends included (source excluded)."""
        path = [step_id]
        while (parent := self.steps[path[-1]].input) != SOURCE:
            path.append(parent)
        return path[::-1]

    def encoding(self, step_id: str, source_format: str, *, animated: bool = False) -> Encoding:
        """The nearest `convert` on the path decides; else the source's own format."""
        for sid in reversed(self.path(step_id)):
            params = self.steps[sid].params
            if isinstance(params, ConvertParams):
                return Encoding(params.format, params.quality, params.lossless, params.speed)
        if source_format == "gif":
            return Encoding("gif" if animated else "png")
        fmt = _NATIVE_OUTPUT.get(source_format, "png")
        return Encoding(fmt, DEFAULT_QUALITY.get(fmt))

    def output_format(self, step_id: str, source_format: str, *, animated: bool = False) -> str:
        return self.encoding(step_id, source_format, animated=animated).format

    @staticmethod
    def output_key(job_id: str, step_id: str, fmt: str) -> str:
        return f"processed/{job_id}/{step_id}.{EXTENSIONS.get(fmt, fmt)}"

    @staticmethod
    def raw_key(job_id: str, ext: str) -> str:
        return f"raw/{job_id}/source.{EXTENSIONS.get(ext, ext)}"

    def output_sizes(self, source: Size) -> dict[str, Size]:
        """Every step's output size for a source of this oriented size, in plan order."""
        sizes = {SOURCE: source}
        for sid in self.order:
            step = self.steps[sid]
            sizes[sid] = step.output_size(sizes[step.input])
        del sizes[SOURCE]
        return sizes

    def check_budget(self, source: Size, *, frames: int = 1, max_pixels: int) -> None:
        """Refuse the plan (TooManyPixels naming the step) when any step's output, over all
        frames, would exceed `max_pixels`: checked on sizes alone, before any pixel exists."""
        sizes = {SOURCE: source}
        for sid in self.order:
            step = self.steps[sid]
            sizes[sid] = step.check_budget(sizes[step.input], frames=frames, max_pixels=max_pixels)

    def draft_size(self, src_w: int, src_h: int) -> Size | None:
        """The largest size any root path needs from the source; None when one needs it all."""
        needed = [self._needs(sid, src_w, src_h) for sid in self.roots]
        if not needed or any(size is None for size in needed):
            return None
        sizes = [size for size in needed if size is not None]
        return max(w for w, _ in sizes), max(h for _, h in sizes)

    def _needs(self, step_id: str, src_w: int, src_h: int) -> Size | None:
        step = self.steps[step_id]
        target = step.op.target_size(step.params, src_w, src_h)
        if target is not None:
            return target
        children = self._children[step_id]
        if not step.op.passthrough or not children:
            return None  # an output or a non-scalable op: full resolution
        needed = [self._needs(child, src_w, src_h) for child in children]
        if any(size is None for size in needed):
            return None
        sizes = [size for size in needed if size is not None]
        return max(w for w, _ in sizes), max(h for _, h in sizes)
