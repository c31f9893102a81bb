"""The memory soak (issue 12 item 3): the largest photos through the pipeline for minutes on
end, every PixStream process's RSS sampled, to show it stays bounded and does not grow.

    python -m bench.soak bench/corpus [--minutes 10] [--in-flight 4] [--processes 2] [--min-mp 13]

`worker --processes N` of the benchmark's own (own topics and database, the local stack)
renders the contract's example spec on the corpus photos of at least `--min-mp` megapixels,
with `--in-flight` jobs produced to Kafka at any time (a new one as each ends): the workers
always busy, never a backlog to buffer. A worker process is flat when its RSS over the last
half of the soak stays within `GROWTH_LIMIT_MB` of its RSS at the half-way point; render
children are recycled every `PIXSTREAM_RENDER_TASKS_PER_CHILD` renders, so their rows are
many and short. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.isolated import quiet_kafka_logs
from bench.pipeline import Stage, staged, wait_ready
from bench.report import table
from bench.sampler import Proc, Sampler
from bench.suite import cpu_model, root_services
from tests.chaos import machine

#: A worker process whose RSS rose more than this over the soak's second half is growing.
GROWTH_LIMIT_MB = 32.0
#: What issue 12 allows a worker process at its peak.
PEAK_LIMIT_MB = 400.0


@dataclass(frozen=True)
class Memory:
    label: str
    peak_mb: float  # VmHWM
    halfway_mb: float
    last_mb: float
    max_second_half_mb: float

    @property
    def growth_mb(self) -> float:
        return self.max_second_half_mb - self.halfway_mb


def large_photos(corpus: Path, min_mp: float) -> list[bytes]:
    paths = sorted((corpus / "jpeg").glob("*.jpg"))
    chosen = []
    for path in paths:
        with Image.open(path) as image:
            if image.width * image.height >= min_mp * 1_000_000:
                chosen.append(path.read_bytes())
    if not chosen:
        raise SystemExit(f"no photo of {min_mp} MP or more in {corpus / 'jpeg'}: `make corpus`")
    return chosen


async def keep_busy(stage: Stage, photos: list[bytes], in_flight: int, seconds: float) -> int:
    """`in_flight` jobs at any time until `seconds` have passed; the number of jobs ended."""
    deadline = time.monotonic() + seconds
    counter = itertools.count()
    ended = 0

    async def lane() -> None:
        nonlocal ended
        while time.monotonic() < deadline:
            [(job, key)] = await stage.put_sources([photos[next(counter) % len(photos)]], 1)
            await stage.request(job, key)
            await stage.finished.one(job)
            ended += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return ended


def memory_of(proc: Proc, halfway: float) -> Memory:
    before = [kb for at, kb in proc.rss if at <= halfway]
    after = [kb for at, kb in proc.rss if at > halfway]
    half = (before[-1] if before else proc.rss[0][1]) / 1024
    return Memory(
        label=proc.label,
        peak_mb=proc.peak_kb / 1024,
        halfway_mb=half,
        last_mb=proc.rss[-1][1] / 1024,
        max_second_half_mb=max(after, default=0) / 1024,
    )


async def soak(args: argparse.Namespace, sampler: Sampler, logs: Path) -> str:
    photos = large_photos(args.corpus, args.min_mp)
    async with staged(args.processes, ingress=False, logs=logs) as stage:
        sampler.root(stage.worker.pid, "worker supervisor" if args.processes > 1 else "worker")
        await wait_ready(stage, photos, args.processes * 2, args.processes)
        seconds = args.minutes * 60
        print(f"soaking for {args.minutes:g} min on {len(photos)} photos", flush=True)
        start = sampler.mark()
        jobs = await keep_busy(stage, photos, args.in_flight, seconds)
        end = sampler.mark()
        failed = len(stage.finished.failed)
    halfway = start + (end - start) / 2
    workers = [
        memory_of(p, halfway)
        for p in sampler.watched()
        if p.group == "worker" and p.rss and p.rss[0][0] <= start
    ]
    children = [p for p in sampler.watched() if p.group == "render" and p.rss]
    rows = [
        [m.label, m.peak_mb, m.halfway_mb, m.max_second_half_mb, m.growth_mb, m.last_mb]
        for m in workers
    ]
    flat = all(m.growth_mb <= GROWTH_LIMIT_MB for m in workers)
    bounded = all(m.peak_mb <= PEAK_LIMIT_MB for m in workers)
    child_peak = max((p.peak_kb / 1024 for p in children), default=0.0)
    return "\n".join(
        [
            f"Command: `python -m bench.soak {args.corpus} --minutes {args.minutes:g} "
            f"--in-flight {args.in_flight} --processes {args.processes} --min-mp {args.min_mp:g}`",
            f'Machine: {machine()}; `lscpu` model name "{cpu_model()}".',
            "",
            f"{jobs} jobs in {end - start:.0f} s ({jobs / (end - start):.2f} jobs/s) on "
            f"{len(photos)} photos of {args.min_mp:g} MP or more; {failed} failed.",
            "",
            table(
                [
                    "worker process",
                    "peak RSS MB",
                    "RSS at half-way MB",
                    "max RSS, second half MB",
                    "growth MB",
                    "last RSS MB",
                ],
                rows,
            ),
            "",
            f"Render children: {len(children)} over the soak, peak RSS {child_peak:.0f} MB.",
            f"Flat (growth <= {GROWTH_LIMIT_MB:g} MB in the second half): "
            f"{'yes' if flat else 'NO'}; bounded (peak <= {PEAK_LIMIT_MB:g} MB): "
            f"{'yes' if bounded else 'NO'}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=4, help="jobs in the pipeline at once")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--min-mp", type=float, default=13.0, help="smallest photo used, in MP")
    args = parser.parse_args(argv)
    quiet_kafka_logs()
    logs = Path(tempfile.mkdtemp(prefix="pixstream-soak-"))
    with Sampler() as sampler:
        root_services(sampler)
        report = asyncio.run(soak(args, sampler, logs))
    print(f"\n{report}\n\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
