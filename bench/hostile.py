"""Run the hostile cases of issue 10 through render() with the default limits and report each
outcome, its time and the peak RSS, in this process and in a RenderPool child.

    python -m bench.hostile

Every case must end with a PixStream code; the worst a case may cost is the peak RSS printed.
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

from bench.ops import Limits
from pixstream import errors, spec
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.settings import Settings
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.renderpool import RenderPool
from tests.unit import hostile
from tests.unit.conftest import Images
from tests.unit.test_limits import EXPLODING

FUZZED = Path(__file__).parents[1] / "tests" / "data" / "fuzz"
THUMB = [StepSpec(id="thumb", op="thumbnail", params={"size": 256})]


def cases() -> dict[str, tuple[bytes, list[StepSpec]]]:
    images = Images()
    one_pixel = images.encode(images.solid((1, 1)), "PNG")
    found = {
        "hidden 4000x4000 TIFF page": (hostile.hidden_page_tiff(), THUMB),
        "GIF frame growing the canvas to 3000x3000": (hostile.growing_gif(), THUMB),
        "GIF frame growing the canvas to 7000x7000": (hostile.growing_gif(big=7000), THUMB),
        "40 frames x 2.25 MP GIF": (hostile.animation_gif(40, 1500), THUMB),
        "100 MP PNG header": (images.png_header_only(10_000, 10_000), THUMB),
        "49 MP PNG header, no data (just under budget)": (
            images.png_header_only(7000, 7000),
            THUMB,
        ),
        "exploding spec on a 1x1 PNG": (
            one_pixel,
            JobSpec.model_validate(EXPLODING).steps,
        ),
    }
    for path in sorted(FUZZED.iterdir()):
        found[f"fuzzed {path.name}"] = (path.read_bytes(), THUMB)
    return found


def outcome(result: object) -> str:
    failures = getattr(result, "failures", {})
    return ",".join(sorted({f.code for f in failures.values()})) or "ok"


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def _render(data: bytes, steps: list[StepSpec], max_pixels: int, max_frames: int) -> object:
    return render(data, Plan.from_spec(JobSpec(steps=steps)), max_pixels=max_pixels,
                  max_frames=max_frames)  # fmt: skip


async def main() -> None:
    settings = Settings()
    limits: Limits = {"max_pixels": settings.max_pixels, "max_frames": settings.max_frames}
    print(f"limits: {limits}, render memory limit {settings.render_memory_limit_bytes} bytes\n")
    print("| case | bytes | code (thread) | ms | code (pool) | ms |")
    print("|---|---:|---|---:|---|---:|")
    async with RenderPool.from_settings(settings) as pool:
        for name, (data, steps) in cases().items():
            start = time.perf_counter()
            try:
                here = outcome(_render(data, steps, **limits))
            except errors.PermanentError as exc:
                here = exc.code
            here_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            try:
                there = outcome(await pool.render(data, steps, **limits))
            except errors.PermanentError as exc:
                there = exc.code
            there_ms = (time.perf_counter() - start) * 1000
            print(f"| {name} | {len(data)} | {here} | {here_ms:.0f} | {there} | {there_ms:.0f} |")
        child = await pool.call(peak_mb)
    start = time.perf_counter()
    try:
        spec.loads(b"[" * 65536)
    except errors.InvalidSpec as exc:
        print(f"| 64 KB of '[' as the spec | 65536 | {exc.code} | "
              f"{(time.perf_counter() - start) * 1000:.0f} | | |")  # fmt: skip
    print(f"\npeak RSS: this process {peak_mb():.0f} MB; a render child {child:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
