"""The pipeline under load on the local stack: its own topics, database and processes, sources
in S3, jobs produced to Kafka, and a watcher of the terminal events. `bench.suite` drives it
through HTTP and Kafka; run alone it measures the Kafka path of `worker --processes N`.

    python -m bench.pipeline CORPUS_DIR [--processes 1] [--jobs 68] [--paced-jobs 34]

Alone: produces `--jobs` job requests of the contract's example spec at once and measures
jobs/s until the last terminal event, then produces `--paced-jobs` at `--rate` jobs/s and
reports the p50/p95 time from producing `job.requested` to receiving `job.completed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.isolated import isolated, start, stop
from bench.report import quantile
from pixstream import kafka
from pixstream.events import JOB_COMPLETED, JOB_FAILED, CloudEvent
from pixstream.settings import Settings
from pixstream.storage import open_storage
from tests.harness import job_requested

#: Faust joins its group and the render pool starts its children in a few seconds; a busy
#: machine may take much longer.
STARTUP_SECONDS = 180.0


def photos_of(corpus: Path) -> list[bytes]:
    """The corpus's JPEG photos, in name order (every benchmark cycles through the same list)."""
    paths = sorted((corpus / "jpeg").glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no photos in {corpus / 'jpeg'}: run `make corpus`")
    return [path.read_bytes() for path in paths]


class Finished:
    """When each job's terminal event arrived, by job id, read from the events topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at: dict[str, float] = {}
        self.failed: set[str] = set()
        self._waiting: dict[str, asyncio.Future[float]] = {}

    async def run(self) -> None:
        async with kafka.open_consumer(
            self.settings, self.settings.topic("events"), group_id=None
        ) as consumer:
            async for record in consumer:
                event = CloudEvent.parse(record.value)
                if event.type not in (JOB_COMPLETED, JOB_FAILED):
                    continue
                job = record.key.decode()
                if job in self.at:
                    continue
                self.at[job] = time.perf_counter()
                if event.type == JOB_FAILED:
                    self.failed.add(job)
                waiter = self._waiting.pop(job, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(self.at[job])

    async def one(self, job: str, within: float = 600) -> float:
        """The time `job` ended (waits for it)."""
        if job in self.at:
            return self.at[job]
        waiter = self._waiting.setdefault(job, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            raise SystemExit(f"job {job} did not finish in {within:.0f} s") from None

    async def all(self, jobs: Sequence[str], within: float = 600) -> float:
        """The time the last of `jobs` ended."""
        deadline = time.perf_counter() + within
        ends = [await self.one(j, max(1.0, deadline - time.perf_counter())) for j in jobs]
        return max(ends, default=time.perf_counter())


class Child:
    """A `pixstream --log-level WARNING <command>` process; its output goes to a log file."""

    def __init__(self, settings: Settings, log: Path, *command: str, **env: str) -> None:
        with log.open("ab") as out:
            self.proc = start(settings, "--log-level", "WARNING", *command, log=out, **env)
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Stage:
    """A pipeline of the benchmark's own: settings (topic prefix, consumer group, database),
    the worker and (optionally) the ingress processes, and the watcher of terminal events."""

    settings: Settings
    finished: Finished
    worker: Child
    ingress: Child | None
    producer: AIOKafkaProducer

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    async def put_sources(self, photos: Sequence[bytes], count: int) -> list[tuple[str, str]]:
        """`count` (job id, source key) pairs, the photos cycled, stored in S3 now."""
        jobs = []
        async with open_storage(self.settings) as storage:
            for i in range(count):
                job = uuid.uuid4().hex
                key = f"raw/{job}/source.jpg"
                await storage.put(key, photos[i % len(photos)], "image/jpeg")
                jobs.append((job, key))
        return jobs

    async def traffic(self) -> dict[str, int]:
        """Messages in each of the stage's topics (end offsets summed over partitions) and
        the transactions committed in its database, so far."""
        counts: dict[str, int] = {}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            prefixes = (f"{self.settings.topic_prefix}.", f"{self.settings.app_id}-")
            mine = [t for t in await admin.list_topics() if t.startswith(prefixes)]
            described = await admin.describe_topics(mine)
        finally:
            await admin.close()
        parts = [
            TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]
        ]
        async with kafka.open_consumer(self.settings, group_id=None) as consumer:
            for tp, end in (await consumer.end_offsets(parts)).items():
                name = "kafka " + tp.topic.replace(self.settings.topic_prefix, "<prefix>", 1)
                counts[name] = counts.get(name, 0) + end
        url = self.settings.database_url.get_secret_value()
        conn = await asyncpg.connect(url)
        try:
            counts["postgres transactions"] = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", url.rsplit("/", 1)[1]
            )
        finally:
            await conn.close()
        return counts

    async def request(self, job: str, key: str) -> float:
        """Produce one job request (acknowledged); returns when it was sent."""
        sent = time.perf_counter()
        event = job_requested(job, key).to_bytes()
        await kafka.send(self.producer, self.settings.topic("jobs"), event, key=job)
        return sent


@asynccontextmanager
async def staged(
    processes: int, *, ingress: bool, logs: Path, http_port: int = 8097
) -> AsyncIterator[Stage]:
    """Start `worker --processes N` (and an ingress) of their own; afterwards remove
    everything made: processes, topics, database."""
    # No rate limit: the benchmark's clients are one address submitting hundreds of jobs.
    # No render-once reuse: the corpus is cycled, and every job must render as the limit does.
    env = {
        "PIXSTREAM_HTTP_PORT": str(http_port),
        "PIXSTREAM_RATE_LIMIT_PER_MINUTE": "0",
        "PIXSTREAM_REUSE": "off",
    }
    async with isolated(worker_metrics_port=0, http_port=http_port) as settings:
        finished = Finished(settings)
        watcher = asyncio.create_task(finished.run())
        children: list[Child] = []
        try:
            worker = Child(
                settings, logs / "worker.log", "worker", "--processes", str(processes), **env
            )
            children.append(worker)
            front = Child(settings, logs / "ingress.log", "ingress", **env) if ingress else None
            if front is not None:
                children.append(front)
            async with kafka.open_producer(settings) as producer:
                yield Stage(settings, finished, worker, front, producer)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for child in reversed(children):
                await asyncio.to_thread(child.stop)


async def group_stable(stage: Stage, members: int, within: float) -> None:
    """Wait until the workers' consumer group is stable with `members` members: a job sent
    while the second process joins waits out the rebalance, and is measured with it."""
    settings = stage.settings
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + within
        state, joined = "", 0
        while time.monotonic() < deadline:
            if stage.worker.proc.poll() is not None:
                tail = stage.worker.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the worker exited ({stage.worker.proc.returncode}):\n{tail}")
            [described] = await admin.describe_consumer_groups([settings.app_id])
            _error, _group, state, _kind, _protocol, group_members = described.groups[0]
            joined = len(group_members)
            if state == "Stable" and joined == members:
                return
            await asyncio.sleep(1)
        raise SystemExit(f"the workers' group is {state!r} with {joined} of {members} members")
    finally:
        await admin.close()


async def wait_ready(stage: Stage, photos: Sequence[bytes], warm_jobs: int, members: int) -> None:
    """The group stable with every worker process, then `warm_jobs` through Kafka (the render
    children started, the connections open), then the group still stable."""
    await group_stable(stage, members, STARTUP_SECONDS)
    warm = await stage.put_sources(photos, warm_jobs)
    await asyncio.gather(*(stage.request(j, k) for j, k in warm))
    await stage.finished.all([j for j, _ in warm], within=STARTUP_SECONDS)
    await group_stable(stage, members, STARTUP_SECONDS)


@dataclass(frozen=True)
class Burst:
    jobs: int
    seconds: float
    failed: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


@dataclass(frozen=True)
class Paced:
    rate: float
    latencies: list[float]  # seconds, request to terminal event, in request order
    failed: int


async def kafka_burst(stage: Stage, photos: Sequence[bytes], count: int) -> Burst:
    """`count` jobs (sources already in S3) produced at once; first produce to last end."""
    batch = await stage.put_sources(photos, count)
    start = time.perf_counter()
    await asyncio.gather(*(stage.request(j, k) for j, k in batch))
    end = await stage.finished.all([j for j, _ in batch])
    return Burst(count, end - start, len(stage.finished.failed & {j for j, _ in batch}))


async def paced(
    count: int,
    rate: float,
    submit: Callable[[int], Awaitable[tuple[str, float]]],
    finished: Finished,
) -> Paced:
    """`count` submissions, one every 1/`rate` s whatever the previous ones are doing;
    `submit(i)` returns (job id, when it was submitted)."""

    async def one(i: int) -> float:
        job, sent = await submit(i)
        return await finished.one(job) - sent

    start = time.perf_counter()
    tasks = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    latencies = list(await asyncio.gather(*tasks))
    return Paced(rate, latencies, len(finished.failed))


async def kafka_paced(stage: Stage, photos: Sequence[bytes], count: int, rate: float) -> Paced:
    sources = await stage.put_sources(photos, count)

    async def submit(i: int) -> tuple[str, float]:
        job, key = sources[i]
        return job, await stage.request(job, key)

    result = await paced(count, rate, submit, stage.finished)
    failed = len(stage.finished.failed & {j for j, _ in sources})
    return Paced(rate, result.latencies, failed)


async def bench(corpus: Path, processes: int, count: int, paced_count: int, rate: float) -> None:
    photos = photos_of(corpus)
    with tempfile.TemporaryDirectory(prefix="pixstream-bench-") as logs:
        async with staged(processes, ingress=False, logs=Path(logs)) as stage:
            await wait_ready(stage, photos, processes * 4, processes)
            burst = await kafka_burst(stage, photos, count)
            slow = await kafka_paced(stage, photos, paced_count, rate)
    lat = sorted(slow.latencies)
    print(
        f"| {processes} | {count} | {burst.rate:.1f} | {rate:.1f} | {len(lat)} | "
        f"{quantile(lat, 0.5) * 1000:.0f} | {quantile(lat, 0.95) * 1000:.0f} | "
        f"{burst.failed + slow.failed} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=68)
    parser.add_argument("--paced-jobs", type=int, default=34)
    parser.add_argument("--rate", type=float, default=2.0, help="paced jobs/s")
    args = parser.parse_args()
    print(
        "| worker processes | jobs | jobs/s | paced at jobs/s | paced jobs | p50 ms | p95 ms"
        " | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    asyncio.run(bench(args.corpus, args.processes, args.jobs, args.paced_jobs, args.rate))


if __name__ == "__main__":
    main()
