"""What an operation is: a name, a pydantic params model and a pure image -> image function
(or, for a metadata op such as `analyze`, a pure image -> report function).

Also the shared parameter types (bounded dimensions, radius, quality) and the resampling helper
every size-changing operation uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixstream import errors

MAX_DIMENSION = 16384

Dimension = Annotated[int, Field(ge=1, le=MAX_DIMENSION)]
Offset = Annotated[int, Field(ge=0, le=MAX_DIMENSION - 1)]
Radius = Annotated[float, Field(ge=0, le=100)]
Quality = Annotated[int, Field(ge=1, le=100)]

P = TypeVar("P", bound=BaseModel)
Size = tuple[int, int]


class Params(BaseModel):
    """Base of every op's params: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def no_target(params: BaseModel, width: int, height: int) -> Size | None:
    """The op needs its input at full resolution."""
    return None


def same_size(params: BaseModel, width: int, height: int) -> Size:
    """The op keeps the size of its input."""
    return width, height


@dataclass(frozen=True)
class Subject:
    """What a metadata op describes: its input's frames and what is known of the source."""

    frames: Sequence[Image.Image]
    size: Size  # upright, at full resolution (the frames may be a JPEG draft of it)
    source: bytes  # the source file as stored
    format: str  # the source's format
    exif: BaseModel | None  # the source's allow-listed EXIF (ops/exif.py), when it was read


@dataclass(frozen=True)
class Operation(Generic[P]):
    """One registered operation; `apply` never mutates its input (branches share images)."""

    name: str
    description: str
    params_model: type[P]
    apply: Callable[[Image.Image, P], Image.Image]
    # The smallest input size that gives the same result, for JPEG draft decoding.
    target_size: Callable[[P, int, int], Size | None] = no_target
    # Commutes with scaling (pixel-wise or identity): draft decisions look through it.
    passthrough: bool = False
    # For ops whose per-frame choice must be the same on every frame (e.g. an entropy crop).
    apply_frames: Callable[[Sequence[Image.Image], P], list[Image.Image]] | None = None
    # The size `apply` returns for an input of this size, computed without pixels: the planner
    # refuses a step whose output is over the pixel budget before Pillow allocates it.
    output_size: Callable[[P, int, int], Size] = same_size
    # A metadata op reports on its input instead of transforming it: its step is a leaf (the
    # spec refuses it as an input), its output is `{"kind": "metadata"}` and no object.
    describe: Callable[[Subject, P], BaseModel] | None = None

    @property
    def makes_image(self) -> bool:
        return self.describe is None

    def parse(self, raw: Mapping[str, Any]) -> P:
        """Validated params; raises InvalidParams naming the field (`params.size: ...`)."""
        try:
            return self.params_model.model_validate(raw)
        except ValidationError as exc:
            raise errors.InvalidParams(describe_errors(exc, "params")) from exc

    def run(self, frames: Sequence[Image.Image], params: P) -> list[Image.Image]:
        """Apply to every frame of an image (one frame unless animated)."""
        if self.apply_frames is not None:
            return self.apply_frames(frames, params)
        return [self.apply(frame, params) for frame in frames]

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of the params (for GET /v1/operations and schemas/)."""
        return self.params_model.model_json_schema()


def describe_errors(exc: ValidationError, prefix: str) -> str:
    """`prefix.field: message` for each pydantic error, joined by `; `."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = prefix
        for item in error["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else f".{item}"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)


def resample(image: Image.Image, size: Size) -> Image.Image:
    """LANCZOS resize; big downscales first `reduce()` by an integer factor.

    `reducing_gap=2.0` (Pillow's own thumbnail default) keeps at least a 2x LANCZOS step after
    the box reduction, which Pillow documents as indistinguishable from a full LANCZOS pass.
    """
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def scaled(width: int, height: int, scale: float) -> Size:
    return max(1, round(width * scale)), max(1, round(height * scale))


def center_crop(image: Image.Image, size: Size) -> Image.Image:
    if image.size == size:
        return image
    left = (image.width - size[0]) // 2
    top = (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))
