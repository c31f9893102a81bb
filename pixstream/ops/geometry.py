"""Operations that change the geometry: resize, thumbnail, crop, rotate, flip."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import Discriminator, Field, RootModel, Tag, model_validator

from pixstream import errors
from pixstream.ops.operation import (
    Dimension,
    Offset,
    Operation,
    Params,
    Size,
    center_crop,
    resample,
    scaled,
)


class ResizeParams(Params):
    """Resize to a width, a height or a box; without `upscale` images never grow."""

    width: Dimension | None = None
    height: Dimension | None = None
    fit: Literal["contain", "cover", "fill"] = Field(
        default="contain",
        description="with both sides: contain fits inside, cover fills and crops the "
        "centre, fill stretches",
    )
    upscale: bool = False

    @model_validator(mode="after")
    def _one_side(self) -> ResizeParams:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self


def resize_geometry(p: ResizeParams, width: int, height: int) -> tuple[Size, Size]:
    """(size the image is scaled to, final size after the `cover` centre crop)."""
    box_w, box_h = p.width, p.height
    if box_w is not None and box_h is not None and p.fit == "fill":
        sx, sy = box_w / width, box_h / height
        if not p.upscale:
            sx, sy = min(sx, 1.0), min(sy, 1.0)
        size = (max(1, round(width * sx)), max(1, round(height * sy)))
        return size, size
    if box_w is None:
        assert box_h is not None
        scale = box_h / height
    elif box_h is None:
        scale = box_w / width
    elif p.fit == "contain":
        scale = min(box_w / width, box_h / height)
    else:
        scale = max(box_w / width, box_h / height)
    if not p.upscale:
        scale = min(scale, 1.0)
    size = scaled(width, height, scale)
    if box_w is not None and box_h is not None and p.fit == "cover":
        return size, (min(box_w, size[0]), min(box_h, size[1]))
    return size, size


def _resize(image: Image.Image, p: ResizeParams) -> Image.Image:
    size, final = resize_geometry(p, image.width, image.height)
    return center_crop(resample(image, size), final)


def _resize_target(p: ResizeParams, width: int, height: int) -> Size:
    return resize_geometry(p, width, height)[0]


def _resize_output(p: ResizeParams, width: int, height: int) -> Size:
    return resize_geometry(p, width, height)[1]


class ThumbnailParams(Params):
    """Fit within size x size, keeping the aspect ratio; never upscales."""

    size: Dimension


def thumbnail_size(p: ThumbnailParams, width: int, height: int) -> Size:
    return scaled(width, height, min(1.0, p.size / width, p.size / height))


def _thumbnail(image: Image.Image, p: ThumbnailParams) -> Image.Image:
    return resample(image, thumbnail_size(p, image.width, image.height))


class CropBox(Params):
    """Crop a rectangle given in pixels of the (oriented) input."""

    left: Offset
    top: Offset
    width: Dimension
    height: Dimension


class CropAspect(Params):
    """Crop the largest rectangle of the given aspect ratio, placed by gravity."""

    aspect: str = Field(pattern=r"^[1-9][0-9]{0,4}:[1-9][0-9]{0,4}$", examples=["16:9"])
    gravity: Literal["center", "entropy"] = Field(
        default="center", description="entropy keeps the most detailed window"
    )


def _crop_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "aspect" if "aspect" in value else "box"
    return "aspect" if isinstance(value, CropAspect) else "box"


class CropParams(
    RootModel[
        Annotated[
            Annotated[CropBox, Tag("box")] | Annotated[CropAspect, Tag("aspect")],
            Discriminator(_crop_kind),
        ]
    ]
):
    """{left, top, width, height} or {aspect, gravity}."""


def crop_box(p: CropParams, image: Image.Image) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box; InvalidParams when it leaves the image."""
    spec = p.root
    if isinstance(spec, CropBox):
        box = (spec.left, spec.top, spec.left + spec.width, spec.top + spec.height)
        if box[2] > image.width or box[3] > image.height:
            raise errors.InvalidParams(
                f"params: the crop box {box} (left, top, right, bottom) extends outside "
                f"the {image.width}x{image.height} image"
            )
        return box
    w, h = image.size
    cw, ch = aspect_size(spec, w, h)
    if spec.gravity == "entropy":
        left, top = _entropy_origin(image, (cw, ch))
    else:
        left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def aspect_size(spec: CropAspect, width: int, height: int) -> Size:
    """The largest width x height window of the aspect ratio inside the image."""
    match = re.fullmatch(r"(\d+):(\d+)", spec.aspect)
    assert match is not None  # guaranteed by the field pattern
    ratio = int(match[1]) / int(match[2])
    w, h = width, height
    cw, ch = (max(1, round(h * ratio)), h) if w / h > ratio else (w, max(1, round(w / ratio)))
    return min(cw, w), min(ch, h)


def crop_size(p: CropParams, width: int, height: int) -> Size:
    spec = p.root
    if isinstance(spec, CropBox):
        return spec.width, spec.height  # a box outside the image fails when run
    return aspect_size(spec, width, height)


def _entropy_origin(image: Image.Image, size: Size, positions: int = 9) -> tuple[int, int]:
    """Slide the window along the free axis and keep the most detailed position."""
    w, h = image.size
    slack_x, slack_y = w - size[0], h - size[1]
    if slack_x == slack_y == 0:
        return 0, 0
    # Entropy on a ~128 px grey copy: cheap, and detail at that scale is what matters.
    factor = max(1, max(w, h) // 128)
    small = image.convert("L").reduce(factor) if factor > 1 else image.convert("L")
    best, best_score = (0, 0), -1.0
    for i in range(positions):
        x, y = slack_x * i // (positions - 1), slack_y * i // (positions - 1)
        window = (x // factor, y // factor, (x + size[0]) // factor, (y + size[1]) // factor)
        score = small.crop(window).entropy()
        if score > best_score:
            best, best_score = (x, y), score
    return best


def _crop(image: Image.Image, p: CropParams) -> Image.Image:
    return image.crop(crop_box(p, image))


def _crop_frames(frames: Sequence[Image.Image], p: CropParams) -> list[Image.Image]:
    # One box for every frame: an entropy crop chosen per frame would make the animation jump.
    box = crop_box(p, frames[0])
    return [frame.crop(box) for frame in frames]


class RotateParams(Params):
    """Rotate clockwise; with `expand` the canvas grows to hold the whole image."""

    degrees: float = Field(ge=-360, le=360, description="clockwise")
    expand: bool = True


_QUARTER_TURNS = {
    90: Image.Transpose.ROTATE_270,  # Pillow's named rotations are counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


def rotate_size(p: RotateParams, width: int, height: int) -> Size:
    """The size `_rotate` gives, by Pillow's own arithmetic (`Image.rotate`) when it rotates."""
    turn = p.degrees % 360
    if turn == 0 or not p.expand:
        return width, height
    if turn in _QUARTER_TURNS:
        return (width, height) if turn == 180 else (height, width)
    angle = -math.radians(-p.degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = width / 2, height / 2
    # Pillow's inverse matrix: x' = a*x + b*y + c, y' = d*x + e*y + f, about the centre.
    a, b, d, e = cos, sin, -sin, cos
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    corners = [(a * x + b * y + c, d * x + e * y + f) for x, y in _corners(width, height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return (
        math.ceil(max(xs)) - math.floor(min(xs)),
        math.ceil(max(ys)) - math.floor(min(ys)),
    )


def _corners(width: int, height: int) -> list[tuple[int, int]]:
    return [(0, 0), (width, 0), (width, height), (0, height)]


def _rotate(image: Image.Image, p: RotateParams) -> Image.Image:
    turn = p.degrees % 360
    if turn == 0:
        return image
    if turn in _QUARTER_TURNS and (p.expand or image.width == image.height or turn == 180):
        return image.transpose(_QUARTER_TURNS[int(turn)])  # exact and fast
    fill = (0, 0, 0, 0) if image.mode == "RGBA" else (255, 255, 255)
    return image.rotate(-p.degrees, Image.Resampling.BICUBIC, expand=p.expand, fillcolor=fill)


class FlipParams(Params):
    """Mirror horizontally (left-right) or vertically (top-bottom)."""

    direction: Literal["horizontal", "vertical"]


def _flip(image: Image.Image, p: FlipParams) -> Image.Image:
    if p.direction == "horizontal":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


RESIZE = Operation(
    "resize",
    "Resize to a width, height or box.",
    ResizeParams,
    _resize,
    _resize_target,
    output_size=_resize_output,
)
THUMBNAIL = Operation(
    "thumbnail",
    "Fit within a square, keeping the aspect ratio.",
    ThumbnailParams,
    _thumbnail,
    lambda p, w, h: thumbnail_size(p, w, h),
    output_size=thumbnail_size,
)
CROP = Operation(
    "crop",
    "Crop a pixel box, or an aspect ratio placed by gravity.",
    CropParams,
    _crop,
    apply_frames=_crop_frames,
    output_size=crop_size,
)
ROTATE = Operation(
    "rotate", "Rotate clockwise by degrees.", RotateParams, _rotate, output_size=rotate_size
)
FLIP = Operation("flip", "Mirror the image.", FlipParams, _flip, passthrough=True)
