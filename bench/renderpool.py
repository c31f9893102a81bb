"""Time render() in the worker's thread against RenderPool.render() in a child process.

    python -m bench.renderpool CORPUS_DIR [--glob 'jpeg/*.jpg'] [--repeat 3]

The difference is what the pool costs: pickling the source bytes to the child and the encoded
outputs back, and the hop through the executor. Also prints the child's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

from bench.ops import Limits
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.renderpool import RenderPool

LIMITS: Limits = {"max_pixels": 50_000_000, "max_frames": 100}
STEPS = [
    StepSpec(id="web", op="resize", params={"width": 1024}),
    StepSpec(id="webp", op="convert", params={"format": "webp", "quality": 80}, input="web"),
    StepSpec(id="thumb", op="thumbnail", params={"size": 256}),
]


def _child_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(files: list[Path], repeat: int) -> None:
    plan = Plan.from_spec(JobSpec(steps=STEPS))
    corpus = [path.read_bytes() for path in files]
    thread: list[float] = []
    pooled: list[float] = []
    async with RenderPool(processes=1, memory_limit_bytes=1_200_000_000) as pool:
        for data in corpus:
            best_thread = best_pool = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                await asyncio.to_thread(render, data, plan, **LIMITS)
                best_thread = min(best_thread, time.perf_counter() - start)
                start = time.perf_counter()
                await pool.render(data, STEPS, **LIMITS)
                best_pool = min(best_pool, time.perf_counter() - start)
            thread.append(best_thread * 1000)
            pooled.append(best_pool * 1000)
        child_rss = await pool.call(_child_peak_rss_mb)
    t, p = statistics.fmean(thread), statistics.fmean(pooled)
    size = statistics.fmean(len(d) for d in corpus) / 1e6
    print(f"{len(corpus)} files, mean {size:.1f} MB, best of {repeat}; steps: web, webp, thumb")
    print("| where | ms/img | overhead |")
    print("|---|---:|---:|")
    print(f"| thread (asyncio.to_thread) | {t:.1f} | |")
    print(
        f"| RenderPool (forkserver child) | {p:.1f} | {p - t:+.1f} ms ({(p / t - 1) * 100:+.1f}%) |"
    )
    print(f"child peak RSS: {child_rss:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--glob", default="jpeg/*.jpg")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    files = sorted(args.corpus.glob(args.glob))
    if not files:
        print(f"no files match {args.corpus / args.glob}", file=sys.stderr)
        return 1
    asyncio.run(run(files, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
