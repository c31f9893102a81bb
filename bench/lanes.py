"""Priority lanes: an interactive job's latency with 300 batch jobs queued, against idle.

    python -m bench.lanes CORPUS_DIR [--batch 300] [--probes 5] [--requests jobs.batch]

Runs one `pixstream worker` (render once off, so every job renders) on topics and a database
of its own. Latency is from producing `job.requested` to receiving `job.completed`. First
`--probes` interactive jobs one after another on the idle system; then `--batch` batch jobs
(`"priority": "batch"`, the corpus photos cycled) are queued at once on `--requests` (the
batch lane's jobs topic, as the ingress sends them, or `jobs`, the contract's topic, as
another system may), one interactive probe is sent with them (right after the last), and
while they drain the same probes run again, one second apart. The contract: within 2x of idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaProducer

from bench.isolated import isolated, new_prefix, start, stop
from pixstream import kafka
from pixstream.events import JOB_COMPLETED, JOB_FAILED, JOB_REQUESTED, CloudEvent
from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE
from pixstream.storage import open_storage
from pixstream.topics import jobs_topic
from tests.harness import job_requested, jpeg_bytes


class Ends:
    """When each job's terminal event arrived, and when the planner announced it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at: dict[str, float] = {}
        self.planned: dict[str, float] = {}

    async def run(self) -> None:
        topic = self.settings.topic("events")
        async with kafka.open_consumer(self.settings, topic, group_id=None) as consumer:
            async for record in consumer:
                event = CloudEvent.parse(record.value)
                if event.type in (JOB_COMPLETED, JOB_FAILED):
                    self.at.setdefault(record.key.decode(), time.perf_counter())
                elif event.type == JOB_REQUESTED:
                    self.planned.setdefault(record.key.decode(), event.time.timestamp())

    async def wait(self, job: str, within: float = 600) -> float:
        deadline = time.perf_counter() + within
        while job not in self.at:
            if time.perf_counter() > deadline:
                raise SystemExit(f"job {job} did not finish in {within:.0f} s")
            await asyncio.sleep(0.002)
        return self.at[job]


async def store(settings: Settings, photos: list[bytes]) -> list[tuple[str, str]]:
    jobs = []
    async with open_storage(settings) as storage:
        for photo in photos:
            job = uuid.uuid4().hex
            await storage.put(f"raw/{job}/source.jpg", photo, "image/jpeg")
            jobs.append((job, f"raw/{job}/source.jpg"))
    return jobs


async def probe(
    settings: Settings, producer: AIOKafkaProducer, ends: Ends, photo: bytes
) -> tuple[str, float]:
    """One interactive job: its id and latency (s)."""
    ((job, key),) = await store(settings, [photo])
    sent = time.perf_counter()
    await kafka.send(producer, settings.topic("jobs"), job_requested(job, key).to_bytes(), key=job)
    return job, await ends.wait(job) - sent


async def bench(
    photos: list[bytes], batch: int, probes: int, requests: str, prefix: str, log: IO[bytes]
) -> None:
    async with isolated(prefix) as settings:
        worker = start(settings, "--log-level", "WARNING", "worker", log=log, PIXSTREAM_REUSE="off")
        ends = Ends(settings)
        watcher = asyncio.create_task(ends.run())
        # The probe: a mid-size photo of the corpus, each time under a new job id.
        sample = sorted(photos, key=len)[len(photos) // 2]
        try:
            async with kafka.open_producer(settings) as producer:
                await probe(settings, producer, ends, jpeg_bytes((64, 48)))  # warm-up
                idle = [(await probe(settings, producer, ends, sample))[1] for _ in range(probes)]
                queued = await store(settings, [photos[i % len(photos)] for i in range(batch)])
                for job, key in queued:
                    event = job_requested(job, key, priority="batch").to_bytes()
                    await kafka.send(producer, settings.topic(requests), event, key=job)
                loaded_at = time.perf_counter()
                first, with_burst = await probe(settings, producer, ends, sample)
                ahead = sum(
                    ends.planned.get(job, float("inf")) < ends.planned[first] for job, _ in queued
                )
                left = sum(job not in ends.at for job, _ in queued)
                print(f"  probe sent with the burst {with_burst * 1000:.0f} ms ({ahead} batch jobs "
                      f"planned before it, {left} still queued when it ended)")  # fmt: skip
                busy = []
                for _ in range(probes):
                    await asyncio.sleep(1.0)
                    busy.append((await probe(settings, producer, ends, sample))[1])
                    left = sum(job not in ends.at for job, _ in queued)
                    print(f"  probe {busy[-1] * 1000:.0f} ms with {left} batch jobs still queued")
                await asyncio.gather(*(ends.wait(job) for job, _ in queued))
                drained = time.perf_counter() - loaded_at
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.to_thread(stop, worker)
    i, b = statistics.median(idle), statistics.median(busy)
    print(f"idle: {', '.join(f'{x * 1000:.0f}' for x in idle)} ms (median {i * 1000:.0f})")
    print(f"sent with the {batch} batch requests (on {settings.topic(requests)}): "
          f"{with_burst * 1000:.0f} ms ({with_burst / i:.2f}x)")  # fmt: skip
    print(f"with {batch} batch jobs queued: {', '.join(f'{x * 1000:.0f}' for x in busy)} ms "
          f"(median {b * 1000:.0f}, max {max(busy) * 1000:.0f})")  # fmt: skip
    print(f"median ratio {b / i:.2f}x, max/median-idle {max(busy) / i:.2f}x; the backlog "
          f"drained in {drained:.0f} s ({batch / drained:.1f} jobs/s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--glob", default="jpeg/*.jpg")
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument(
        "--requests",
        choices=[jobs_topic(BATCH), jobs_topic(INTERACTIVE)],
        default=jobs_topic(BATCH),
        help="where the batch requests go: their lane's jobs topic (as the ingress sends "
        "them), or the contract's jobs topic, planned in arrival order with the probes",
    )
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.corpus.glob(args.glob))]
    if not photos:
        raise SystemExit(f"no photos match {args.corpus / args.glob}")
    prefix = new_prefix()
    with Path(f"/tmp/{prefix}-worker.log").open("wb") as log:
        asyncio.run(bench(photos, args.batch, args.probes, args.requests, prefix, log))


if __name__ == "__main__":
    main()
