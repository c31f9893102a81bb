"""Render once: a second identical job against the first, through the real pipeline.

    python -m bench.reuse CORPUS_DIR [--photos 8] [--glob 'jpeg/*.jpg']

Runs one `pixstream worker` on topics and a database of its own. For each photo, a job of the
contract's spec (resize 1024 + webp, thumbnail 256) is produced to Kafka, then an identical
job (same bytes under a new job id and source key, same tenant); each one's latency is the
time from producing `job.requested` to receiving `job.completed`. The second should find
every output in the render-once index and copy it (no decode): the ratio is first / second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaProducer

from bench.isolated import isolated, new_prefix, start, stop
from pixstream import kafka
from pixstream.events import JOB_COMPLETED, JOB_FAILED, CloudEvent
from pixstream.ownership import with_tenant
from pixstream.settings import Settings
from pixstream.storage import open_storage
from tests.harness import job_requested, jpeg_bytes

TENANT = "bench"


class Ends:
    """When each job's terminal event arrived, and whether its outputs were reused."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        self.arrivals: dict[str, list[tuple[str, float]]] = {}  # every event, as received
        self.sent: dict[str, float] = {}

    def hops(self, job: str) -> dict[str, float]:
        """When each type of the job's events last arrived, in ms after its request."""
        return {t: (at - self.sent[job]) * 1000 for t, at in self.arrivals.get(job, [])}

    async def run(self) -> None:
        topic = self.settings.topic("events")
        async with kafka.open_consumer(self.settings, topic, group_id=None) as consumer:
            async for record in consumer:
                event = CloudEvent.parse(record.value)
                job = record.key.decode()
                self.arrivals.setdefault(job, []).append((event.type, time.perf_counter()))
                if event.type in (JOB_COMPLETED, JOB_FAILED):
                    self.at.setdefault(job, time.perf_counter())
                    outputs = event.data.get("outputs", {}).values()
                    self.reused[job] = bool(outputs) and all(o.get("reused_from") for o in outputs)
                    if event.type == JOB_FAILED:
                        raise SystemExit(f"job {job} failed: {event.data['errors']}")

    async def wait(self, job: str, within: float = 300) -> float:
        deadline = time.perf_counter() + within
        while job not in self.at:
            if time.perf_counter() > deadline:
                raise SystemExit(f"job {job} did not finish in {within:.0f} s")
            await asyncio.sleep(0.002)
        return self.at[job]


async def one_job(
    settings: Settings, producer: AIOKafkaProducer, ends: Ends, photo: bytes
) -> tuple[str, float]:
    """Store `photo` as a new job's source, produce its request; its id and latency (s)."""
    job = uuid.uuid4().hex
    key = f"raw/{job}/source.jpg"
    async with open_storage(settings) as storage:
        await storage.put(key, photo, "image/jpeg")
    event = with_tenant(job_requested(job, key), TENANT)
    sent = time.perf_counter()
    ends.sent[job] = sent
    await kafka.send(producer, settings.topic("jobs"), event.to_bytes(), key=job)
    return job, await ends.wait(job) - sent


@dataclass
class Pair:
    """One photo: the first job and the identical second one, with their latencies (s)."""

    photo: str
    size: int
    first: str
    first_s: float
    second: str
    second_s: float
    reused: bool
    second_hops: dict[str, float]  # ms after the request, when each event type last arrived


async def bench(photos: list[tuple[str, bytes]], prefix: str, log: IO[bytes]) -> list[Pair]:
    async with isolated(prefix) as settings:
        # INFO and JSON: the op agent's "task done in N ms" line is the op stage's own time.
        worker = start(settings, "--log-level", "INFO", "--json-logs", "worker", log=log)
        ends = Ends(settings)
        watcher = asyncio.create_task(ends.run())
        pairs: list[Pair] = []
        try:
            async with kafka.open_producer(settings) as producer:
                # Warm-up, not measured: the worker joins its group, the render pool starts,
                # and the reuse path runs once (its first S3 copy loads botocore's model).
                warm = jpeg_bytes((64, 48))
                for _ in range(2):
                    await one_job(settings, producer, ends, warm)
                for name, data in photos:
                    first, first_s = await one_job(settings, producer, ends, data)
                    second, second_s = await one_job(settings, producer, ends, data)
                    pairs.append(
                        Pair(
                            name,
                            len(data),
                            first,
                            first_s,
                            second,
                            second_s,
                            ends.reused[second],
                            ends.hops(second),
                        )
                    )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await watcher
            await asyncio.to_thread(stop, worker)
    return pairs


def task_ms(log: Path) -> dict[str, float]:
    """Each job's op-stage time, from the worker's `task done in N ms` lines."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if (m := re.match(r"task done in (\d+) ms", entry.get("message", ""))) is not None:
                found[entry["job_id"]] = float(m.group(1))
    return found


def report(pairs: list[Pair], tasks: dict[str, float]) -> None:
    print(
        "| photo | bytes | first job (ms) | second job (ms) | job: first / second "
        "| first task (ms) | second task (ms) | reused |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for p in pairs:
        t1 = tasks.get(p.first, float("nan"))
        # No task at all when the planner answered the job from the index.
        t2 = f"{tasks[p.second]:.0f}" if p.second in tasks else "none"
        print(
            f"| {p.photo} | {p.size:,} | {p.first_s * 1000:.0f} | {p.second_s * 1000:.0f} | "
            f"{p.first_s / p.second_s:.1f}x | {t1:.0f} | {t2} | "
            f"{'yes' if p.reused else 'NO'} |"
        )
    jobs = [p.first_s / p.second_s for p in pairs]
    stage = [
        tasks[p.first] / max(tasks[p.second], 1)
        for p in pairs
        if p.first in tasks and p.second in tasks
    ]
    first = statistics.median(p.first_s for p in pairs)
    second = statistics.median(p.second_s for p in pairs)
    print(
        f"\njob latency: median first {first * 1000:.0f} ms, second {second * 1000:.0f} ms"
        f" ({first / second:.1f}x), ratio per photo median {statistics.median(jobs):.1f}x"
        f" (min {min(jobs):.1f}x); {sum(p.second not in tasks for p in pairs)} of"
        f" {len(pairs)} second jobs answered by the planner (no task)"
    )
    if stage:  # second jobs that went to an op agent
        print(f"op stage: ratio median {statistics.median(stage):.1f}x (min {min(stage):.1f}x)")
    # Where a reused job's time goes: each event type's arrival after the request (medians).
    kinds = sorted({t for p in pairs for t in p.second_hops}, key=lambda t: _median_hop(pairs, t))
    print("\nsecond job, median ms after the request: " + ", ".join(
        f"{t.removeprefix('pixstream.')} {_median_hop(pairs, t):.0f}" for t in kinds
    ))  # fmt: skip


def _median_hop(pairs: list[Pair], kind: str) -> float:
    return statistics.median(p.second_hops[kind] for p in pairs if kind in p.second_hops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--glob", default="jpeg/*.jpg")
    parser.add_argument("--photos", type=int, default=8)
    args = parser.parse_args()
    paths = sorted(args.corpus.glob(args.glob))[: args.photos]
    if not paths:
        raise SystemExit(f"no photos match {args.corpus / args.glob}")
    prefix = new_prefix()
    log_path = Path(f"/tmp/{prefix}-worker.log")
    with log_path.open("wb") as log:
        pairs = asyncio.run(bench([(p.name, p.read_bytes()) for p in paths], prefix, log))
    report(pairs, task_ms(log_path))


if __name__ == "__main__":
    main()
