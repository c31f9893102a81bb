"""The fault suite's engine: the real pipeline (worker processes, the ingress, jobs through HTTP
and straight to Kafka, a webhook receiver) under a seeded schedule of faults, then the oracles
of "nothing lost, nothing twice" (docs/design/architecture.md) checked on what came out.

`bench/chaos.py` runs long schedules (`make chaos`); tests/e2e/test_chaos.py a short one on
every `make test`. Faults touch only what the run owns, except the broker and PostgreSQL of
the local stack, which are restarted at once and checked to be back up at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from PIL import Image
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pixstream import kafka
from pixstream.db.migrate import apply_migrations
from pixstream.dlq import DeadLetter, read_dead_letters, replayed_ids
from pixstream.events import JOB_COMPLETED, CloudEvent, JobCompleted, make_event
from pixstream.ingress import create_app
from pixstream.redelivery import DLQ_TRUNCATED, TIERS
from pixstream.settings import Settings
from pixstream.stack.base import pid_alive
from pixstream.stack.kafka import KafkaService
from pixstream.stack.minio import MinioService
from pixstream.stack.postgres import PostgresService
from pixstream.storage import ensure_bucket, open_storage
from pixstream.topics import apply_topics, load_topics
from pixstream.worker.reconciler import group_topics
from tests.conftest import drop_database, isolated
from tests.harness import (
    CONTRACT_SPEC,
    TERMINAL,
    EventWatcher,
    WorkerProcess,
    delete_topics,
    job_requested,
    jpeg_bytes,
    new_job_id,
    settings_env,
)

SOURCE_SIZE: Final = (800, 600)
SHORT_HANG_SECONDS: Final = 20.0
# A call to a hung S3 fails after botocore's 2 tries of a 10 s read timeout (storage.py); a
# task makes up to two calls in a row (get, then the puts), and a worker restart or a
# rebalance may come between.
S3_ATTEMPT_SECONDS: Final = 60.0
SETTLE_SECONDS: Final = 120.0  # the promise: every job terminal this long after the last fault
STARTUP_SECONDS: Final = 180.0
SCRIPTED: Final = (
    "poison",
    "broker",
    "postgres",
    "s3-short",
    "dlq-refuses",
    "dlq-truncates",
    "s3-long",
)
BIG_POISON_BYTES: Final = 1_500_000
STALLED_LINE: Final = re.compile(r"job stalled")
PARKED_LINE: Final = re.compile(r"transient failure, retrying")


# -- the schedule ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the faults begin
    name: str
    worker: int = 0  # kill: which worker
    pause: float = 0.0  # kill: seconds before the restart; broker: seconds down


@dataclass(frozen=True)
class Schedule:
    seed: int
    seconds: float  # how long the killer runs
    faults: tuple[Fault, ...]

    def lines(self) -> list[str]:
        return [
            f"{f.at:7.1f}s  {f.name}"
            + (f" worker {f.worker}, restart after {f.pause:.1f}s" if f.name == "kill" else "")
            for f in self.faults
        ]


def make_schedule(
    seed: int,
    seconds: float,
    scripted: Sequence[str] = SCRIPTED,
    *,
    workers: int = 2,
    kill_every: tuple[float, float] = (10.0, 30.0),
    restart_after: tuple[float, float] = (1.0, 5.0),
) -> Schedule:
    """faust's own killer (a random worker every 10-30 s, restarted after a short delay) for
    `seconds`, with the scripted faults spread over it in order; seeded, so a run repeats."""
    rng = random.Random(seed)
    faults = []
    at = rng.uniform(*kill_every)
    while at < seconds:
        faults.append(
            Fault(at, "kill", worker=rng.randrange(workers), pause=rng.uniform(*restart_after))
        )
        at += rng.uniform(*kill_every)
    slot = 0.7 * seconds / max(len(scripted), 1)
    for i, name in enumerate(scripted):
        at = 0.1 * seconds + slot * i + rng.uniform(0, 0.3 * slot)
        faults.append(Fault(at, name, pause=rng.uniform(2.0, 6.0)))
    return Schedule(seed, seconds, tuple(sorted(faults, key=lambda f: f.at)))


def distinct_source(n: int) -> bytes:
    """A source of its own for job `n`: identical bytes would be rendered once and copied
    after (render once), and the suite is about renders under faults."""
    return jpeg_bytes(SOURCE_SIZE, color=(n % 256, (n // 256) % 256, 40))


def long_hang_seconds(retry_attempts: int) -> float:
    """A hang longer than the retry budget: every attempt times out, with the tiers between."""
    waits = sum(TIERS[min(a, len(TIERS)) - 1].delay_seconds for a in range(1, retry_attempts + 1))
    return (retry_attempts + 1) * S3_ATTEMPT_SECONDS + waits + 15.0


# -- what the run saw -------------------------------------------------------------------------
class TimedWatcher(EventWatcher):
    """The harness's watcher, also noting when each job's first terminal event arrived."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.terminal_at: dict[str, float] = {}

    async def _pump(self, consumer: Any) -> None:
        async for record in consumer:
            event = CloudEvent.parse(record.value)
            job = record.key.decode()
            if event.type in TERMINAL:
                self.terminal_at.setdefault(job, time.monotonic())
            async with self._changed:
                self.events[job].append(event)
                self._changed.notify_all()


@dataclass(frozen=True)
class Hit:
    webhook_id: str
    job_id: str
    valid: bool


class Receiver:
    """A webhook receiver on 127.0.0.1 that checks every signature with the official
    `standardwebhooks` package as it arrives and answers 200."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.hits: list[Hit] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            self.webhook.verify(body, {k.lower(): v for k, v in headers.items()})
            valid = True
        except WebhookVerificationError:
            valid = False
        webhook_id = request.headers.get("webhook-id", "")
        self.hits.append(Hit(webhook_id, _job_of(body, webhook_id), valid))
        return web.Response(status=200)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        try:
            yield self
        finally:
            await self._runner.cleanup()

    def ids_by_job(self) -> dict[str, set[str]]:
        ids: dict[str, set[str]] = defaultdict(set)
        for hit in self.hits:
            ids[hit.job_id].add(hit.webhook_id)
        return ids


def _job_of(body: bytes, webhook_id: str) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        payload = json.loads(body)
        data = payload.get("data", payload)
        if isinstance(data, dict) and data.get("job_id"):
            return str(data["job_id"])
    return webhook_id.split(".", 1)[0]


@dataclass
class FaultRecord:
    name: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    seed: int
    seconds: float
    jobs_http: int = 0
    jobs_kafka: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    faults: list[FaultRecord] = field(default_factory=list)
    redrives: int = 0
    settle_seconds: float | None = None
    duplicate_events: int = 0
    duplicate_webhooks: int = 0
    dead_lettered_jobs: int = 0
    replays: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return self.jobs_http + self.jobs_kafka

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))

    def summary(self) -> str:
        kinds = Counter(f.name for f in self.faults)
        lines = [
            f"seed {self.seed}: {'PASS' if self.ok else 'FAIL'}",
            f"  jobs accepted      {self.jobs} ({self.jobs_http} HTTP, {self.jobs_kafka} Kafka);"
            f" not accepted {dict(self.refused) or 0}",
            f"  faults             {len(self.faults)}: "
            + ", ".join(f"{n} x{c}" for n, c in sorted(kinds.items())),
            f"  re-drives needed   {self.redrives}",
            f"  settled after last fault  {_secs(self.settle_seconds)}"
            + ("" if self.settle_seconds is not None else " (some jobs never ended)"),
            f"  duplicates delivered  {self.duplicate_events} events,"
            f" {self.duplicate_webhooks} webhooks",
            f"  dead-lettered jobs {self.dead_lettered_jobs}, replayed letters {self.replays}",
            f"  PostgreSQL rows    {self.rows}",
        ]
        lines += [
            f"  [{'ok' if c.ok else 'FAIL'}] {c.name} {c.detail}".rstrip() for c in self.checks
        ]
        lines += [f"    {f.start:7.1f}-{f.end:7.1f}s {f.name} {f.detail}" for f in self.faults]
        return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Options:
    workers: int = 2
    interval: float = 2.0  # seconds between two submitted jobs (HTTP and Kafka in turn)
    retry_attempts: int | None = None  # None: the project's default
    private_s3_port: int | None = None  # None: the shared S3 (no S3 faults then)
    startup_seconds: float = STARTUP_SECONDS
    settle_seconds: float = SETTLE_SECONDS


class ChaosRun:
    """One run: set up, inject the schedule under load, settle, check. Every wait is bounded."""

    def __init__(
        self,
        services: Settings,
        database_url: str,
        workdir: Path,
        schedule: Schedule,
        options: Options,
    ) -> None:
        self.services = services
        self.workdir = workdir
        self.schedule = schedule
        self.options = options
        self.rng = random.Random(schedule.seed + 1)
        updates: dict[str, Any] = {"webhook_allow_private": True}
        if options.retry_attempts is not None:
            updates["retry_attempts"] = options.retry_attempts
        if options.private_s3_port is not None:
            updates["s3_endpoint_url"] = f"http://127.0.0.1:{options.private_s3_port}"
        self.settings = isolated(services, database_url, **updates)
        self.report = Report(schedule.seed, schedule.seconds)
        self.workers: list[WorkerProcess] = []
        self.watcher = TimedWatcher(self.settings)
        self.receiver = Receiver(self.settings.webhook_secret.get_secret_value())
        self.accepted: dict[str, str] = {}  # job id -> "http" | "kafka"
        self.sources: list[tuple[str, str]] = []  # pre-stored (job id, source key)
        self.poison_keys: dict[str, str] = {}  # key -> which fault
        self.minio: MinioService | None = None
        self.t0 = time.monotonic()
        self.last_fault = self.t0
        home = services.home.resolve()
        self.broker = KafkaService(home, services)
        self.postgres = PostgresService(home, services)
        # The faults that change what the DLQ takes run one after the other: a dead letter
        # must not be refused by another fault's limit.
        self.dlq_lock = asyncio.Lock()
        self.producer: AIOKafkaProducer
        self.api: TestClient[Any, Any]

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    # -- set-up and tear-down ----------------------------------------------------------
    @asynccontextmanager
    async def pipeline(self) -> AsyncIterator[None]:
        s = self.settings
        async with AsyncExitStack() as stack:
            if self.options.private_s3_port is not None:
                self.minio = MinioService(self.workdir / "minio", s)
                await asyncio.to_thread(self.minio.up)
                stack.callback(self.minio.down)
                stack.push_async_callback(self._resume_s3)
                await ensure_bucket(s)
            await apply_topics(s.kafka_bootstrap, load_topics(s))
            stack.push_async_callback(delete_topics, s)
            stack.push_async_callback(self._stack_back_up)
            self.workers = [
                WorkerProcess(s, self.workdir / f"worker-{i}.log").start()
                for i in range(self.options.workers)
            ]
            stack.callback(self._stop_workers)
            await stack.enter_async_context(self.receiver.running())
            await stack.enter_async_context(self.watcher.running())
            self.producer = await stack.enter_async_context(kafka.open_producer(s))
            self.api = TestClient(TestServer(create_app(s), host="127.0.0.1"))
            await self.api.start_server()
            stack.push_async_callback(self.api.close)
            await self._warm_up()
            yield

    def _stop_workers(self) -> None:
        for w in self.workers:
            w.stop()

    async def _resume_s3(self) -> None:
        pid = self.minio.pid() if self.minio else None
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def _stack_back_up(self) -> None:
        """The shared broker and PostgreSQL are up when the run ends, whatever happened."""
        for service in (self.broker, self.postgres):
            if not await asyncio.to_thread(service.ready):
                self.log(f"{service.name} is not answering; starting it")
                await asyncio.to_thread(service.up, 240.0)

    async def _warm_up(self) -> None:
        """Store the sources of the Kafka jobs now (S3 will hang later), then wait for a job
        to go through: the workers have joined the group."""
        count = int(self.schedule.seconds / self.options.interval / 2) + 10
        if any(f.name == "s3-long" for f in self.schedule.faults):
            hang = 2 * long_hang_seconds(self.settings.retry_attempts)
            count += int(hang / self.options.interval / 2)
        async with open_storage(self.settings) as storage:
            for n in range(count):
                data = distinct_source(n)
                job = new_job_id()
                key = f"raw/{job}/source.jpg"
                await storage.put(key, data, "image/jpeg")
                self.sources.append((job, key))
        probe = await self._kafka_job(accept=False)
        try:
            await self.watcher.wait_terminal([probe], self.options.startup_seconds)
        except AssertionError:
            raise AssertionError(
                "the workers did not process a job:\n" + self.workers[0].log()
            ) from None
        self.log(f"pipeline ready ({self.settings.topic_prefix}); {count} sources stored")

    # -- load ------------------------------------------------------------------------------
    async def _kafka_job(self, *, accept: bool = True) -> str:
        job, key = self.sources.pop()
        event = job_requested(job, key, webhook_url=self.receiver.url)
        try:
            await asyncio.wait_for(
                kafka.send(self.producer, self.settings.topic("jobs"), event.to_bytes(), key=job),
                30,
            )
        except (KafkaError, TimeoutError) as exc:
            self.report.refused[f"kafka {type(exc).__name__}"] += 1
            return job
        if accept:
            self.accepted[job] = "kafka"
            self.report.jobs_kafka += 1
        return job

    async def _http_job(self) -> None:
        form = aiohttp.FormData()
        form.add_field("file", distinct_source(-len(self.accepted) - 1), filename="photo.jpg")
        spec = {**CONTRACT_SPEC, "webhook_url": self.receiver.url}
        form.add_field("spec", json.dumps(spec), content_type="application/json")
        try:
            async with asyncio.timeout(30):
                resp = await self.api.post("/v1/jobs", data=form)
                body = await resp.json() if resp.status == 202 else None
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.report.refused[f"http {type(exc).__name__}"] += 1
            return
        if body is None:
            self.report.refused[f"http {resp.status}"] += 1
            return
        self.accepted[str(body["job_id"])] = "http"
        self.report.jobs_http += 1

    async def _load(self, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[Any]] = set()
        n = 0
        while not stop.is_set() and self.sources:
            job = self._http_job() if n % 2 else self._kafka_job()
            task = asyncio.create_task(job)  # a hung dependency must not hold the others
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.interval)
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    # -- faults ------------------------------------------------------------------------
    async def _inject(self) -> None:
        handlers: dict[str, Callable[[Fault], Awaitable[str]]] = {
            "kill": self._kill,
            "poison": self._poison,
            "broker": self._broker,
            "postgres": self._postgres,
            "s3-short": self._s3_short,
            "s3-long": self._s3_long,
            "dlq-refuses": self._dlq_refuses,
            "dlq-truncates": self._dlq_truncates,
        }
        start = time.monotonic()
        tasks = []
        for fault in self.schedule.faults:
            await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
            tasks.append(asyncio.create_task(self._timed(fault, handlers[fault.name])))
        await asyncio.gather(*tasks)

    async def _timed(self, fault: Fault, run: Callable[[Fault], Awaitable[str]]) -> None:
        began = time.monotonic()
        self.log(f"fault {fault.name} begins")
        detail = await run(fault)
        ended = time.monotonic()
        self.last_fault = max(self.last_fault, ended)
        self.log(f"fault {fault.name} ends: {detail}")
        self.report.faults.append(FaultRecord(fault.name, began - self.t0, ended - self.t0, detail))

    async def _kill(self, fault: Fault) -> str:
        worker = self.workers[fault.worker]
        orphans = descendants(worker.proc.pid) if worker.proc else []
        await asyncio.to_thread(worker.kill)
        # The worker's render processes outlive it (a leak reported to the worker's owners);
        # end them, so a long run does not fill the machine.
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(fault.pause)
        self.workers[fault.worker] = WorkerProcess(self.settings, worker.log_path).start()
        return f"worker {fault.worker} SIGKILLed, restarted after {fault.pause:.1f}s"

    async def _poison(self, fault: Fault) -> str:
        """Garbage bytes and a CloudEvent of the wrong type on an op topic, then valid jobs."""
        topic = self.settings.topic("op.resize")
        garbage = f"poison-garbage-{uuid.uuid4().hex[:8]}"
        wrong = f"poison-type-{uuid.uuid4().hex[:8]}"
        completed = JobCompleted(job_id=new_job_id(), outputs={})
        for key, value in (
            (garbage, b"\x00\xffnot a cloudevent\x00" * 8),
            (wrong, make_event(JOB_COMPLETED, completed).to_bytes()),
        ):
            await kafka.send(self.producer, topic, value, key=key)
            self.poison_keys[key] = "poison"
        jobs = [await self._kafka_job() for _ in range(3)]
        return f"2 poison records on {topic}, then jobs {', '.join(j[:8] for j in jobs)}"

    async def _broker(self, fault: Fault) -> str:
        pid = self.broker.pid()
        if pid is None:
            return "broker not running from this stack; skipped"
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: not pid_alive(pid), 30)
        await asyncio.sleep(fault.pause)
        began = time.monotonic()
        await asyncio.to_thread(self.broker.up, 240.0)
        took = time.monotonic() - began
        return f"broker pid {pid} SIGKILLed, down {fault.pause:.1f}s + {took:.0f}s to start"

    async def _postgres(self, fault: Fault) -> str:
        began = time.monotonic()
        await asyncio.to_thread(self.postgres.down)
        await asyncio.to_thread(self.postgres.up, 120.0)
        return f"PostgreSQL restarted (fast shutdown) in {time.monotonic() - began:.1f}s"

    async def _hang_s3(self, seconds: float) -> str:
        pid = self.minio.pid() if self.minio else None
        if pid is None:
            return "no private S3; skipped"
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"S3 SIGSTOPped for {seconds:.0f}s"

    async def _s3_short(self, fault: Fault) -> str:
        return await self._hang_s3(SHORT_HANG_SECONDS)

    async def _s3_long(self, fault: Fault) -> str:
        """S3 hung past the retry budget: hung until attempts fail (a job is parked), then
        down (killed: refused at once, so the rest of the budget is the retry tiers' waits)
        until jobs are dead-lettered, and back (its data kept) for `dlq replay`."""
        async with self.dlq_lock:
            pid = self.minio.pid() if self.minio else None
            if pid is None or self.minio is None:
                return "no private S3; skipped"
            began = time.monotonic()
            parked_before = self._log_count(PARKED_LINE)
            os.kill(pid, signal.SIGSTOP)
            try:
                parked = await _until(
                    lambda: self._log_count(PARKED_LINE) > parked_before,
                    long_hang_seconds(self.settings.retry_attempts),
                    interval=2.0,
                )
                hung = time.monotonic() - began
                os.kill(pid, signal.SIGKILL)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            await _until(lambda: not pid_alive(pid), 30)
            spent = await _until_async(
                self._a_job_dead_lettered,
                long_hang_seconds(self.settings.retry_attempts),
                interval=5.0,
            )
            await asyncio.sleep(5.0 if spent else 0.0)
            await asyncio.to_thread(self.minio.up)
            return (
                f"S3 SIGSTOPped {hung:.0f}s (attempts failed: {parked}), then down until jobs"
                f" were dead-lettered ({spent}); {time.monotonic() - began:.0f}s in all"
            )

    def _log_count(self, pattern: re.Pattern[str]) -> int:
        return sum(
            len(pattern.findall(p.read_text(errors="replace")))
            for p in {w.log_path for w in self.workers}
            if p.exists()
        )

    async def _dead_lettered(self, key: str) -> bool:
        letters = await read_dead_letters(self.settings)
        return any((d.key or b"").decode() == key for d in letters)

    async def _a_job_dead_lettered(self) -> bool:
        try:
            letters = await read_dead_letters(self.settings)
        except KafkaError:
            return False
        return any((d.key or b"").decode() in self.accepted for d in letters)

    async def _topic_config(self, name: str, **changes: str) -> None:
        """Set a topic's config to its declaration plus `changes` (AlterConfigs replaces the
        whole dynamic config)."""
        declared = {t.name: dict(t.config) for t in load_topics(self.settings)}[name]
        configs = {**declared, **{k.replace("_", "."): v for k, v in changes.items()}}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)]
            )
        finally:
            await admin.close()

    async def _dlq_refuses(self, fault: Fault) -> str:
        """The DLQ refuses a dead letter (and its truncated copy): the source offset must not
        be committed while it does; once it takes records again, a rebalance re-reads it."""
        async with self.dlq_lock:
            return await self._refused(fault)

    async def _refused(self, fault: Fault) -> str:
        dlq, topic = self.settings.topic("dlq"), self.settings.topic("op.resize")
        await self._topic_config(dlq, max_message_bytes="1024")
        key = f"poison-refused-{uuid.uuid4().hex[:8]}"
        try:
            meta = await self.producer.send_and_wait(topic, b"\x01" * 4000, key=key.encode())
            self.poison_keys[key] = "dlq-refuses"
            tp = TopicPartition(topic, meta.partition)
            passed = await self._committed_passes(tp, meta.offset, within=20.0)
            # Read while the limit holds: what was written before the commit moved.
            lettered = await self._dead_lettered(key)
        finally:
            await self._topic_config(dlq)
        # Refused until now, the dead letter goes through once the DLQ takes it again.
        alone = await self._committed_passes(tp, meta.offset, within=15.0)
        worker = self.rng.randrange(len(self.workers))
        await self._kill(Fault(0, "kill", worker=worker, pause=fault.pause))
        # The invariant: the offset is committed only once a dead letter (whole or cut to
        # what the DLQ takes) is written; never past a record that has none.
        self.report.check(
            "a dead letter the DLQ refuses never lets its offset be committed",
            lettered or not passed,
            f"{topic}[{meta.partition}]@{meta.offset}: committed past {passed},"
            f" dead letter written {lettered}",
        )
        return (
            f"DLQ max.message.bytes=1024 for 20s, 4000-byte poison at {topic}[{meta.partition}]"
            f"@{meta.offset}: committed past it: {passed}; DLQ restored, past it 15s later"
            f" without a rebalance: {alone}; then worker {worker} SIGKILLed"
        )

    async def _committed_passes(self, tp: TopicPartition, offset: int, within: float) -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                committed = await admin.list_consumer_group_offsets(self.settings.app_id)
                meta = committed.get(tp)
                if meta is not None and meta.offset > offset:
                    return True
                await asyncio.sleep(1.0)
            return False
        finally:
            await admin.close()

    async def _dlq_truncates(self, fault: Fault) -> str:
        """A poison too big for the DLQ: its dead letter must be a truncated copy."""
        async with self.dlq_lock:
            return await self._too_big()

    async def _too_big(self) -> str:
        topic = self.settings.topic("op.resize")
        await self._topic_config(topic, max_message_bytes=str(2 * 1024 * 1024))
        key = f"poison-big-{uuid.uuid4().hex[:8]}"
        big = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, max_request_size=3 * 1024 * 1024
        )
        await big.start()
        try:
            meta = await big.send_and_wait(topic, b"\x02" * BIG_POISON_BYTES, key=key.encode())
        finally:
            await big.stop()
        self.poison_keys[key] = "dlq-truncates"
        return f"{BIG_POISON_BYTES}-byte poison at {topic}[{meta.partition}]@{meta.offset}"

    # -- settling ---------------------------------------------------------------------
    def _unfinished(self) -> list[str]:
        return [j for j in self.accepted if j not in self.watcher.terminal_at]

    async def _settle(self) -> None:
        """Wait for every accepted job to end, replaying the DLQ when jobs wait in it."""
        deadline = self.last_fault + self.options.settle_seconds
        next_replay = time.monotonic() + 10.0
        while (missing := self._unfinished()) and time.monotonic() < deadline:
            if time.monotonic() >= next_replay:
                next_replay = time.monotonic() + 15.0
                if await self._waiting_in_dlq(set(missing)):
                    await self._replay()
            await asyncio.sleep(1.0)
        if self.watcher.terminal_at and not self._unfinished():
            last = max(
                self.watcher.terminal_at[j] for j in self.accepted if j in self.watcher.terminal_at
            )
            self.report.settle_seconds = max(0.0, last - self.last_fault)

    async def _waiting_in_dlq(self, jobs: set[str]) -> bool:
        letters = await read_dead_letters(self.settings)
        async with self._db() as conn:
            done = await replayed_ids(conn, self.settings.topic("dlq"))
        return any((d.key or b"").decode() in jobs and d.id not in done for d in letters)

    async def _replay(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixstream",
            "dlq",
            "replay",
            "--all",
            env=settings_env(self.settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        tail = out.decode(errors="replace").strip().splitlines()[-1:]
        self.log(f"pixstream dlq replay --all: {' '.join(tail)}")

    @asynccontextmanager
    async def _db(self) -> AsyncIterator[Any]:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value(), timeout=10)
        try:
            yield conn
        finally:
            await conn.close()

    # -- the whole run ----------------------------------------------------------------------
    async def run(self) -> Report:
        async with self.pipeline():
            self.t0 = time.monotonic()
            self.log("faults begin:\n  " + "\n  ".join(self.schedule.lines()))
            stop = asyncio.Event()
            load = asyncio.create_task(self._load(stop))
            try:
                await self._inject()
            finally:
                stop.set()
                await load
            self.log(f"faults over; {len(self.accepted)} jobs accepted; settling")
            await self._settle()
            await Oracles(self).check()
        return self.report


class Oracles:
    """What must hold once the run settled."""

    def __init__(self, run: ChaosRun) -> None:
        self.run = run
        self.report = run.report
        self.jobs = list(run.accepted)

    async def check(self) -> None:
        self._terminal()
        await self._database()
        await self._outputs()
        await self._webhooks()
        await self._dead_letters()
        await self._partitions()
        self._redrives()

    def _terminal(self) -> None:
        w = self.run.watcher
        ids = {j: [e.id for e in w.of_type(j, *TERMINAL)] for j in self.jobs}
        missing = [j for j, seen in ids.items() if not seen]
        twice = {j: len(set(seen)) for j, seen in ids.items() if len(set(seen)) > 1}
        self.report.duplicate_events = sum(len(s) - len(set(s)) for s in ids.values())
        self.report.check(
            "every accepted job ended",
            not missing,
            f"{len(missing)} without a terminal event {missing[:3]}" if missing else "",
        )
        self.report.check("one terminal event id per job", not twice, f"{twice}" if twice else "")
        failed = [
            j for j in self.jobs if any(e.type != JOB_COMPLETED for e in w.of_type(j, *TERMINAL))
        ]
        self.report.check(
            "every job completed (none failed by a fault)",
            not failed,
            f"{failed[:3]}" if failed else "",
        )
        late = [
            j
            for j in self.jobs
            if j in w.terminal_at and w.terminal_at[j] > self.run.last_fault + SETTLE_SECONDS
        ]
        self.report.check(
            f"every job terminal within {SETTLE_SECONDS:.0f}s of the last fault",
            not missing and not late,
            f"settled after {_secs(self.report.settle_seconds)}",
        )

    async def _database(self) -> None:
        async with self.run._db() as conn:

            async def all_recorded() -> bool:
                # The recorder writes after the event is on Kafka; after a kill, the batch
                # of a dead worker is written by the partition's next owner.
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) = cardinality($1::text[]) FROM jobs"
                        " WHERE job_id = ANY($1) AND status IN ('completed', 'failed')",
                        self.jobs,
                    )
                )

            await _until_async(all_recorded, 60.0)
            rows = await conn.fetch(
                "SELECT job_id, status, redrives FROM jobs WHERE job_id = ANY($1)", self.jobs
            )
            for table in ("jobs", "idempotency_keys", "webhook_deliveries", "dead_letter_replays"):
                self.report.rows[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        status = {r["job_id"]: r["status"] for r in rows}
        self.report.redrives = sum(int(r["redrives"]) for r in rows)
        open_ = [j for j in self.jobs if status.get(j) not in ("completed", "failed")]
        self.report.check(
            "every job terminal in PostgreSQL",
            not open_,
            f"{len(open_)} not: {open_[:3]}" if open_ else "",
        )

    async def _outputs(self) -> None:
        keys = [
            str(o["key"])
            for j in self.jobs
            for e in self.run.watcher.of_type(j, JOB_COMPLETED)[:1]
            for o in (e.data.get("outputs") or {}).values()
        ]
        bad: list[str] = []
        limit = asyncio.Semaphore(8)
        async with open_storage(self.run.settings) as storage:

            async def decode(key: str) -> None:
                async with limit:
                    try:
                        data = await storage.get(key)
                        with Image.open(io.BytesIO(data)) as image:
                            image.load()
                    except Exception as exc:
                        bad.append(f"{key}: {type(exc).__name__}")

            await asyncio.gather(*(decode(k) for k in keys))
        self.report.check(
            "outputs in S3 and decodable", bool(keys) and not bad, f"{len(keys)} read; {bad[:3]}"
        )

    async def _webhooks(self) -> None:
        receiver = self.run.receiver

        async def all_in() -> bool:
            ids = receiver.ids_by_job()
            return all(ids.get(j) for j in self.jobs)

        await _until_async(all_in, 90.0)
        ids = receiver.ids_by_job()
        missing = [j for j in self.jobs if not ids.get(j)]
        several = {j: len(ids[j]) for j in self.jobs if len(ids.get(j, ())) > 1}
        invalid = [h.webhook_id for h in receiver.hits if not h.valid]
        per_id = Counter(h.webhook_id for h in receiver.hits)
        self.report.duplicate_webhooks = sum(c - 1 for c in per_id.values())
        self.report.check(
            "one webhook-id per job, all signatures valid (standardwebhooks)",
            not missing and not several and not invalid,
            f"{len(missing)} without, {len(several)} with several, {len(invalid)} invalid"
            if missing or several or invalid
            else "",
        )

    async def _dead_letters(self) -> None:
        letters = await read_dead_letters(self.run.settings)
        by_key: dict[str, list[DeadLetter]] = defaultdict(list)
        for d in letters:
            by_key[(d.key or b"").decode()].append(d)
        self.report.dead_lettered_jobs = sum(1 for j in self.jobs if j in by_key)
        self.report.replays = self.report.rows.get("dead_letter_replays", 0)
        unlettered = [k for k in self.run.poison_keys if k not in by_key]
        self.report.check(
            "every poison record dead-lettered",
            not unlettered,
            f"{unlettered}" if unlettered else "",
        )
        for key, kind in self.run.poison_keys.items():
            if kind == "dlq-truncates":
                cut = [d for d in by_key.get(key, []) if d.header(DLQ_TRUNCATED)]
                self.report.check(
                    "a dead letter too big for the DLQ goes as a truncated copy",
                    bool(cut) and cut[0].header(DLQ_TRUNCATED) == str(BIG_POISON_BYTES),
                    f"{len(by_key.get(key, []))} letters, {len(cut)} truncated",
                )
        if any(f.name == "s3-long" and "skipped" not in f.detail for f in self.report.faults):
            self.report.check(
                "S3 hung past the retry budget sent jobs to the DLQ (all came home, replayed"
                " where needed)",
                self.report.dead_lettered_jobs > 0,
                f"{self.report.dead_lettered_jobs} jobs dead-lettered",
            )

    async def _partitions(self) -> None:
        s = self.run.settings
        topics = group_topics(s)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        await consumer.start()
        await admin.start()
        counts = {t.name: t.partitions for t in load_topics(s) if t.name in topics}
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        stuck: list[str] = []
        try:

            async def none_stuck() -> bool:
                committed = await admin.list_consumer_group_offsets(s.app_id)
                ends = await consumer.end_offsets(tps)
                stuck[:] = [
                    f"{tp.topic}[{tp.partition}] {committed[tp].offset if tp in committed else '-'}"
                    f"/{ends[tp]}"
                    for tp in tps
                    if ends[tp] > 0 and (tp not in committed or committed[tp].offset < ends[tp])
                ]
                return not stuck

            await _until_async(none_stuck, 60.0, interval=2.0)
        finally:
            await admin.close()
            await consumer.stop()
        self.report.check(
            "no partition stuck (committed == end offset everywhere)",
            not stuck,
            f"{stuck[:4]}" if stuck else "",
        )

    def _redrives(self) -> None:
        stalled = sum(
            len(STALLED_LINE.findall(p.read_text(errors="replace")))
            for p in {w.log_path for w in self.run.workers}
        )
        self.report.redrives = max(self.report.redrives, stalled)
        self.report.check(
            "nothing waited on the stall timer (0 re-drives)",
            self.report.redrives == 0,
            f"{self.report.redrives} re-drives, {stalled} 'job stalled' log lines",
        )


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in task.read_text().split()]
                found += kids
                todo += kids
    return found


async def _until(predicate: Callable[[], bool], within: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def _until_async(
    predicate: Callable[[], Awaitable[bool]], within: float, interval: float = 1.0
) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def migrated_database(services: Settings, name: str | None = None) -> str:
    """A new, migrated database of the run's own (`name`, or a fresh one); its URL (drop it
    with `drop_database`)."""
    name = name or f"pixstream_chaos_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(services.database_url.get_secret_value())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    url = services.database_url.get_secret_value().rsplit("/", 1)[0] + "/" + name
    await apply_migrations(url)
    return url


async def run_once(
    services: Settings, workdir: Path, schedule: Schedule, options: Options
) -> Report:
    """One run on a database of its own, dropped afterwards."""
    url = await migrated_database(services)
    try:
        return await ChaosRun(services, url, workdir, schedule, options).run()
    finally:
        await drop_database(services, url)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo: a figure is only comparable with one from
    the same processor."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    cpu = cpu_name()
    ram = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        ram = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores (nproc), {cpu}, {ram:.1f} GiB RAM"


__all__ = [
    "SCRIPTED",
    "ChaosRun",
    "Fault",
    "Options",
    "Report",
    "Schedule",
    "machine",
    "make_schedule",
    "run_once",
]
