"""What `analyze` costs per image, against a plain decode of the same file in the same run.

    python -m bench.analyze CORPUS_DIR [--glob 'jpeg/*.jpg'] [--repeat 3]

Rows (best of N per image, mean over the images):
- plain decode: `Image.open(...).load()` at full size, the floor of any job on that file;
- analyze alone: render() of a one-step analyze job (decode + report; a JPEG is drafted);
- resize 1024w, then resize 1024w + analyze: what adding analyze to a real job costs;
- the report on an already decoded full-size image, and its parts (sha256 of the file,
  the 100 px downscale, BlurHash, ThumbHash, the colours).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import thumbhash
from blurhash_rs import blurhash_encode
from PIL import Image

from bench.ops import Limits
from pixstream.ops import codec
from pixstream.ops.analysis import ANALYZE, PLACEHOLDER_SIDE, AnalyzeParams, dominant_colors
from pixstream.ops.operation import Subject, scaled
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec, StepSpec

LIMITS: Limits = {"max_pixels": 100_000_000, "max_frames": 100}


def plan_of(*steps: tuple[str, str, dict[str, Any]]) -> Plan:
    return Plan.from_spec(
        JobSpec(steps=[StepSpec(id=sid, op=op, params=params) for sid, op, params in steps])
    )


ANALYZE_ONLY = plan_of(("info", "analyze", {}))
RESIZE = plan_of(("web", "resize", {"width": 1024}))
RESIZE_AND_ANALYZE = plan_of(("web", "resize", {"width": 1024}), ("info", "analyze", {}))


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def plain_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def small_of(image: Image.Image) -> Image.Image:
    size = scaled(image.width, image.height, min(1.0, PLACEHOLDER_SIDE / max(image.size)))
    return image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def rows_for(data: bytes, repeat: int) -> dict[str, float]:
    decoded = codec.decode(data, **LIMITS, read_exif=True)
    first = decoded.frames[0]
    small = small_of(first)
    rgba = small.convert("RGBA")
    subject = Subject(decoded.frames, decoded.full_size, data, decoded.format, decoded.exif)
    params = AnalyzeParams()
    describe = ANALYZE.describe
    assert describe is not None
    cases: dict[str, Callable[[], object]] = {
        "plain decode (full size)": lambda: plain_decode(data),
        "analyze alone (render)": lambda: render(data, ANALYZE_ONLY, **LIMITS),
        "resize 1024w (render)": lambda: render(data, RESIZE, **LIMITS),
        "resize 1024w + analyze (render)": lambda: render(data, RESIZE_AND_ANALYZE, **LIMITS),
        "report on a decoded full-size image": lambda: describe(subject, params),
        "  sha256 of the file": lambda: hashlib.sha256(data).hexdigest(),
        "  downscale to 100 px": lambda: small_of(first),
        "  blurhash 4x3 (blurhash-rs)": lambda: blurhash_encode(small, 4, 3),
        "  thumbhash (thumbhash-rs)": lambda: thumbhash.rgba_to_thumb_hash(
            rgba.width, rgba.height, rgba.tobytes()
        ),
        "  dominant colours": lambda: dominant_colors(first, params.colors),
    }
    return {name: best_ms(fn, repeat) for name, fn in cases.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--glob", default="jpeg/*.jpg")
    parser.add_argument("--repeat", type=int, default=3, help="best of N per image")
    args = parser.parse_args(argv)
    files = sorted(args.corpus.glob(args.glob))
    if not files:
        print(f"no files match {args.corpus / args.glob}", file=sys.stderr)
        return 1
    per_row: dict[str, list[float]] = {}
    for path in files:
        for name, ms in rows_for(path.read_bytes(), args.repeat).items():
            per_row.setdefault(name, []).append(ms)
    floor = statistics.fmean(per_row["plain decode (full size)"])
    print(f"corpus: {len(files)} files ({args.glob}), best of {args.repeat}\n")
    print("| what | ms/img (mean) | max ms/img | / plain decode |")
    print("|---|---:|---:|---:|")
    for name, times in per_row.items():
        mean = statistics.fmean(times)
        print(f"| {name} | {mean:.2f} | {max(times):.2f} | {mean / floor:.3f} |")
    alone, both = per_row["resize 1024w (render)"], per_row["resize 1024w + analyze (render)"]
    added = [b - a for a, b in zip(alone, both, strict=True)]
    print(
        f"\nanalyze added to a resize job: mean {statistics.fmean(added):.2f} ms, "
        f"max {max(added):.2f} ms per image"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
