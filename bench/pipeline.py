"""Pipeline throughput and latency on the local stack, with real photos.

    python -m bench.pipeline CORPUS_DIR [--processes 1] [--jobs 68] [--seconds 30]

Runs `pixstream worker --processes N` on topics of its own, then (1) produces `--jobs` job
requests of the contract's example spec at once and measures jobs/s until the last terminal
event, and (2) produces at half that rate for `--seconds` and reports the p50/p95 time from
producing `job.requested` to receiving `job.completed`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

from pixstream import kafka
from pixstream.events import JOB_COMPLETED, JOB_FAILED, CloudEvent
from pixstream.settings import Settings
from pixstream.storage import open_storage
from pixstream.topics import apply_topics, load_topics
from tests.harness import delete_topics, job_requested, settings_env


async def _sources(settings: Settings, photos: list[Path], count: int) -> list[tuple[str, str]]:
    """`count` (job id, source key) pairs, cycling through the photos."""
    jobs = []
    async with open_storage(settings) as storage:
        for i in range(count):
            job = uuid.uuid4().hex
            key = f"raw/{job}/source.jpg"
            await storage.put(key, photos[i % len(photos)].read_bytes(), "image/jpeg")
            jobs.append((job, key))
    return jobs


class Finished:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at: dict[str, float] = {}
        self.failed: set[str] = set()

    async def run(self) -> None:
        async with kafka.open_consumer(
            self.settings, self.settings.topic("events"), group_id=None
        ) as consumer:
            async for record in consumer:
                event = CloudEvent.parse(record.value)
                if event.type in (JOB_COMPLETED, JOB_FAILED):
                    self.at.setdefault(record.key.decode(), time.perf_counter())
                    if event.type == JOB_FAILED:
                        self.failed.add(record.key.decode())

    async def wait(self, jobs: list[str], within: float = 600) -> None:
        deadline = time.perf_counter() + within
        while not all(j in self.at for j in jobs):
            if time.perf_counter() > deadline:
                raise SystemExit(f"{sum(j not in self.at for j in jobs)} jobs did not finish")
            await asyncio.sleep(0.02)


async def bench(corpus: Path, processes: int, count: int, seconds: float) -> None:
    photos = sorted((corpus / "jpeg").glob("*.jpg"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, app_id=prefix, worker_metrics_port=0)
    await apply_topics(settings.kafka_bootstrap, load_topics(settings))
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixstream",
        "--log-level",
        "WARNING",
        "worker",
        "--processes",
        str(processes),
        env=settings_env(settings),
    )
    finished = Finished(settings)
    watcher = asyncio.create_task(finished.run())
    try:
        async with kafka.open_producer(settings) as producer:

            async def request(job: str, key: str) -> float:
                sent = time.perf_counter()
                await kafka.send(
                    producer, settings.topic("jobs"), job_requested(job, key).to_bytes(), key=job
                )
                return sent

            warm = await _sources(settings, photos, processes * 4)
            await asyncio.gather(*(request(j, k) for j, k in warm))
            await finished.wait([j for j, _ in warm], within=180)

            batch = await _sources(settings, photos, count)
            start = time.perf_counter()
            await asyncio.gather(*(request(j, k) for j, k in batch))
            await finished.wait([j for j, _ in batch])
            rate = count / (time.perf_counter() - start)

            paced = await _sources(settings, photos, max(1, int(rate / 2 * seconds)))
            interval = 2 / rate
            sent_at: dict[str, float] = {}
            for job, key in paced:
                sent_at[job] = await request(job, key)
                await asyncio.sleep(max(0.0, sent_at[job] + interval - time.perf_counter()))
            await finished.wait(list(sent_at))
        latencies = sorted(finished.at[j] - t for j, t in sent_at.items())
        q = statistics.quantiles(latencies, n=100)
        failed = len(finished.failed & ({j for j, _ in batch} | set(sent_at)))
        print(
            f"| {processes} | {count} | {rate:.1f} | {rate / 2:.1f} | {len(latencies)} | "
            f"{q[49] * 1000:.0f} | {q[94] * 1000:.0f} | {failed} |"
        )
    finally:
        watcher.cancel()
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
        await delete_topics(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=68)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print(
        "| worker processes | jobs | jobs/s | paced at jobs/s | paced jobs | p50 ms | p95 ms"
        " | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    asyncio.run(bench(args.corpus, args.processes, args.jobs, args.seconds))


if __name__ == "__main__":
    main()
