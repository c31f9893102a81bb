"""The `analyze` op: a report on an image (size, hashes, placeholders, colours, EXIF subset)
instead of a new image.

Everything pixel-based is computed on a small downscale (at most 100 px a side), so the report
costs a few milliseconds whatever the source size, and an analyze-only job lets libjpeg decode
a JPEG at 1/8 scale (see `target_size`). docs/design.md says why these two placeholder libraries.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Final

import thumbhash
from blurhash_rs import blurhash_encode
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from pixstream.ops.exif import ExifSubset
from pixstream.ops.operation import Operation, Params, Size, Subject, scaled

#: ThumbHash takes at most 100x100 (its reference encoder's limit) and BlurHash needs no more.
PLACEHOLDER_SIDE: Final = 100
#: Colours are counted on a nearest-neighbour sample this big: the sample's pixels are real
#: pixels of the image (no blend of two colours at an edge becomes a third one).
COLOUR_SIDE: Final = 64
MAX_COLORS: Final = 16
#: Pixels at least this opaque count as the image's colour (transparent ones are background).
_OPAQUE: Final = 128
#: Colours whose channels all differ by at most this much are reported as one.
_SAME_COLOUR: Final = 12


class AnalyzeParams(Params):
    """A report on the image instead of a new image."""

    colors: int = Field(
        default=5, ge=1, le=MAX_COLORS, description="how many dominant colours to report"
    )


class Analysis(BaseModel):
    """What `analyze` reports: the `data` of its `{"kind": "metadata"}` output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=1, description="upright (after EXIF orientation), full resolution")
    height: int = Field(ge=1)
    format: str = Field(description="the source's format: jpeg, png, webp, gif, tiff, avif, heif")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the source file's bytes")
    blurhash: str = Field(min_length=6, max_length=100)
    thumbhash: str = Field(description="base64 (standard alphabet, padded)")
    dominant_colors: list[Annotated[str, Field(pattern="^#[0-9a-f]{6}$")]] = Field(
        description="'#rrggbb', most frequent first", examples=[["#1f3a5c", "#e8d9c0"]]
    )
    has_alpha: bool
    animated: bool
    frames: int = Field(ge=1)
    exif: ExifSubset = Field(default_factory=ExifSubset)


def _describe(subject: Subject, p: AnalyzeParams) -> Analysis:
    first = subject.frames[0]
    has_alpha = first.mode == "RGBA"
    small = _fit(first, PLACEHOLDER_SIDE, Image.Resampling.BOX)
    rgba = small.convert("RGBA")
    width, height = subject.size
    x_components, y_components = (4, 3) if width >= height else (3, 4)
    exif = subject.exif if isinstance(subject.exif, ExifSubset) else ExifSubset()
    return Analysis(
        width=width,
        height=height,
        format=subject.format,
        sha256=hashlib.sha256(subject.source).hexdigest(),
        blurhash=blurhash_encode(small.convert("RGB"), x_components, y_components),
        thumbhash=base64.b64encode(
            thumbhash.rgba_to_thumb_hash(rgba.width, rgba.height, rgba.tobytes())
        ).decode("ascii"),
        dominant_colors=dominant_colors(first, p.colors),
        has_alpha=has_alpha,
        animated=len(subject.frames) > 1,
        frames=len(subject.frames),
        exif=exif,
    )


def dominant_colors(image: Image.Image, count: int) -> list[str]:
    """Up to `count` colours of `image` as '#rrggbb', most frequent first (median cut)."""
    sample = _fit(image, COLOUR_SIDE, Image.Resampling.NEAREST)
    rgb = sample.convert("RGB")
    # More boxes than asked for: with `count` boxes, median cut would average colours together
    # (one box of a red and blue image is purple), which no pixel of the image is.
    palette_image = rgb.quantize(colors=MAX_COLORS, method=Image.Quantize.MEDIANCUT)
    mask = None
    if sample.mode == "RGBA":
        mask = sample.getchannel("A").point(lambda a: 255 if a >= _OPAQUE else 0)
    counts = palette_image.histogram(mask=mask)
    palette = palette_image.getpalette() or []
    ranked = sorted(
        (index for index in range(min(len(counts), len(palette) // 3)) if counts[index]),
        key=lambda index: (-counts[index], index),
    )
    # Median cut splits compression noise around one colour into boxes of its own (#fe0000
    # and #fe0002): a colour this close to a more frequent one is counted as that one.
    merged: list[tuple[tuple[int, int, int], int]] = []
    for index in ranked:
        rgb_value = (palette[3 * index], palette[3 * index + 1], palette[3 * index + 2])
        for slot, (kept, total) in enumerate(merged):
            if max(abs(a - b) for a, b in zip(kept, rgb_value, strict=True)) <= _SAME_COLOUR:
                merged[slot] = (kept, total + counts[index])
                break
        else:
            merged.append((rgb_value, counts[index]))
    merged.sort(key=lambda entry: -entry[1])  # stable: ties keep median cut's order
    return [f"#{r:02x}{g:02x}{b:02x}" for (r, g, b), _ in merged[:count]]


def _fit(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """`image` scaled to fit `side` x `side` (never up), aspect kept."""
    scale = min(1.0, side / max(image.size))
    size = scaled(image.width, image.height, scale)
    if size == image.size:
        return image
    # reducing_gap: a box `reduce()` first, so a 12 MP frame costs about as much as a small one.
    gap = 2.0 if resample is not Image.Resampling.NEAREST else None
    return image.resize(size, resample, reducing_gap=gap)


def _placeholder_size(p: AnalyzeParams, width: int, height: int) -> Size:
    # The analysis needs no more than its small downscale: a JPEG may be drafted down to it.
    return scaled(width, height, min(1.0, PLACEHOLDER_SIDE / max(width, height)))


def _unchanged(image: Image.Image, p: AnalyzeParams) -> Image.Image:
    return image  # never called for a metadata op; keeps the Operation shape whole


ANALYZE: Final = Operation(
    "analyze",
    "Report on the image instead of making one: upright size, format, sha256 of the source, "
    "BlurHash and ThumbHash placeholders, dominant colours, alpha, frames and an allow-listed "
    "EXIF subset (never GPS). A leaf: no step may take it as input.",
    AnalyzeParams,
    _unchanged,
    target_size=_placeholder_size,
    describe=_describe,
)
