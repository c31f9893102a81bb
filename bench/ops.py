"""Time PixStream's render() against a plain Pillow loop doing the same work, per image.

    python -m bench.ops CORPUS_DIR [--glob 'jpeg/*.jpg'] [--repeat 2]

Both sides start from the file's bytes in memory and end with the encoded bytes, so the table
compares decode + operation + encode and nothing else. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec, StepSpec


class Limits(TypedDict):
    """The budgets render() and decode() take, as keyword arguments."""

    max_pixels: int
    max_frames: int


LIMITS: Limits = {"max_pixels": 100_000_000, "max_frames": 100}
JPEG = {"format": "JPEG", "quality": 85, "optimize": True, "progressive": True}
WEBP = {"format": "WEBP", "quality": 80, "method": 4}

Plain = Callable[[Image.Image], tuple[Image.Image, dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    name: str
    steps: list[tuple[str, dict[str, Any]]]  # a chain of (op, params) from the source
    plain: Plain  # the same work in plain Pillow: image -> (result, save options)


def _resize_1024(im: Image.Image) -> Image.Image:
    if im.width <= 1024:
        return im
    return im.resize((1024, round(im.height * 1024 / im.width)), Image.Resampling.LANCZOS)


def _thumb(im: Image.Image) -> Image.Image:
    im.thumbnail((256, 256))  # Pillow's own: draft + reducing_gap, the usual plain loop
    return im


def _square(im: Image.Image) -> Image.Image:
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return im.crop((left, top, left + side, top + side))


def _watermark(im: Image.Image) -> Image.Image:
    size = max(10, min(im.size) // 16)
    font = ImageFont.load_default(size=size)
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    box = draw.textbbox((0, 0), "PixStream", font=font, stroke_width=max(1, size // 15))
    xy = (im.width - box[2] - size // 2, im.height - box[3] - size // 2)
    draw.text(
        xy,
        "PixStream",
        font=font,
        fill=(255, 255, 255, 128),
        stroke_width=max(1, size // 15),
        stroke_fill=(0, 0, 0, 128),
    )
    return Image.alpha_composite(im.convert("RGBA"), overlay).convert("RGB")


CASES = [
    Case("resize 1024w", [("resize", {"width": 1024})], lambda im: (_resize_1024(im), JPEG)),
    Case("thumbnail 256", [("thumbnail", {"size": 256})], lambda im: (_thumb(im), JPEG)),
    Case("crop 1:1", [("crop", {"aspect": "1:1"})], lambda im: (_square(im), JPEG)),
    Case(
        "rotate 90",
        [("rotate", {"degrees": 90})],
        lambda im: (im.transpose(Image.Transpose.ROTATE_270), JPEG),
    ),
    Case(
        "flip",
        [("flip", {"direction": "horizontal"})],
        lambda im: (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), JPEG),
    ),
    Case("grayscale", [("grayscale", {})], lambda im: (im.convert("L").convert("RGB"), JPEG)),
    Case(
        "blur 2",
        [("blur", {"radius": 2})],
        lambda im: (im.filter(ImageFilter.GaussianBlur(2)), JPEG),
    ),
    Case(
        "sharpen",
        [("sharpen", {})],
        lambda im: (im.filter(ImageFilter.UnsharpMask(2, 150, 3)), JPEG),
    ),
    Case("convert webp", [("convert", {"format": "webp", "quality": 80})], lambda im: (im, WEBP)),
    Case("watermark", [("watermark", {"text": "PixStream"})], lambda im: (_watermark(im), JPEG)),
    Case(
        "resize 1024w -> WebP q80",
        [("resize", {"width": 1024}), ("convert", {"format": "webp", "quality": 80})],
        lambda im: (_resize_1024(im), WEBP),
    ),
    Case(
        "thumbnail 256 -> JPEG q85",
        [("thumbnail", {"size": 256}), ("convert", {"format": "jpeg", "quality": 85})],
        lambda im: (_thumb(im), JPEG),
    ),
]


def plan_for(case: Case) -> Plan:
    steps, previous = [], "source"
    for index, (op, params) in enumerate(case.steps):
        steps.append(StepSpec(id=f"s{index}", op=op, params=params, input=previous))
        previous = f"s{index}"
    return Plan.from_spec(JobSpec(steps=steps))


def run_plain(case: Case, data: bytes) -> bytes:
    im = Image.open(io.BytesIO(data))
    result, options = case.plain(im)
    out = io.BytesIO()
    result.save(out, **options)
    return out.getvalue()


def run_pixstream(plan: Plan, data: bytes) -> bytes:
    rendered = render(data, plan, **LIMITS)
    [output] = rendered.outputs.values()
    return output.data


def best_ms(fn: Callable[[], bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--glob", default="jpeg/*.jpg")
    parser.add_argument("--repeat", type=int, default=2, help="best of N per image")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args(argv)
    files = sorted(args.corpus.glob(args.glob))
    if not files:
        print(f"no files match {args.corpus / args.glob}", file=sys.stderr)
        return 1
    corpus = [path.read_bytes() for path in files]
    print(f"corpus: {len(files)} files ({args.glob}), best of {args.repeat}\n")
    print("| op | images | plain ms/img | pixstream ms/img | ratio |")
    print("|---|---:|---:|---:|---:|")
    for case in CASES:
        if args.only not in case.name:
            continue
        plan = plan_for(case)
        plain: list[float] = []
        ours: list[float] = []
        for index, data in enumerate(corpus):
            # Alternate who goes first so cache warmth does not favour one side.
            sides = [
                (plain, partial(run_plain, case, data)),
                (ours, partial(run_pixstream, plan, data)),
            ]
            for times, fn in sides[:: 1 if index % 2 else -1]:
                times.append(best_ms(fn, args.repeat))
        p, o = statistics.fmean(plain), statistics.fmean(ours)
        print(f"| {case.name} | {len(corpus)} | {p:.1f} | {o:.1f} | {o / p:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
