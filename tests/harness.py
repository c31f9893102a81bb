"""Driving the real pipeline from tests: a `pixstream worker` process of the test's own
(topic prefix, consumer group, database), jobs produced as other systems would, and a
watcher that collects the lifecycle events."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image
from pydantic import SecretStr

from pixstream import kafka
from pixstream.apikeys import ANONYMOUS
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    CloudEvent,
    JobRequested,
    SourceKey,
    make_event,
)
from pixstream.ownership import with_tenant
from pixstream.settings import Settings
from pixstream.spec import StepSpec
from pixstream.storage import open_storage

TERMINAL = (JOB_COMPLETED, JOB_FAILED)
# The job spec of the contract's example (../shared/design/contract.md).
CONTRACT_SPEC: dict[str, Any] = {
    "steps": [
        {"id": "web", "op": "resize", "params": {"width": 1024}},
        {
            "id": "webp",
            "op": "convert",
            "params": {"format": "webp", "quality": 80},
            "input": "web",
        },
        {"id": "thumb", "op": "thumbnail", "params": {"size": 256}},
    ]
}
CONTRACT_STEPS = [StepSpec.model_validate(step) for step in CONTRACT_SPEC["steps"]]


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child process exactly these settings: every field, so a
    test's override always reaches the child (metrics off unless asked)."""
    env = {**os.environ, "PIXSTREAM_WORKER_METRICS_PORT": "0"}
    for name, value in settings.model_dump(exclude={"worker_metrics_port"}).items():
        if value is None:
            continue
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr):
            value = raw.get_secret_value()
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list | dict):
            value = json.dumps(value)
        env[f"PIXSTREAM_{name.upper()}"] = str(value)
    env.update(extra)
    return env


class PixstreamProcess:
    """A `pixstream <command>` child process; its output goes to a log file."""

    command: ClassVar[str]

    def __init__(self, settings: Settings, log_path: Path, *args: str, **env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.args = args
        self.env = settings_env(settings, **env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pixstream", self.command, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


class WorkerProcess(PixstreamProcess):
    command = "worker"


class IngressProcess(PixstreamProcess):
    command = "ingress"


class EventWatcher:
    """Collects the test's events topic by job id in the background, as the contract's
    consumers do: an event whose id was already seen is a redelivery (at least once, and
    deterministic ids) and only counted in `redelivered`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: dict[str, list[CloudEvent]] = defaultdict(list)
        self.redelivered: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[EventWatcher]:
        async with kafka.open_consumer(
            self.settings, self.settings.topic("events"), group_id=None
        ) as consumer:
            task = asyncio.create_task(self._pump(consumer))
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _pump(self, consumer: Any) -> None:
        async for record in consumer:
            event = CloudEvent.parse(record.value)
            if event.id in self._seen:
                self.redelivered[event.type] += 1
                continue
            self._seen.add(event.id)
            async with self._changed:
                self.events[record.key.decode()].append(event)
                self._changed.notify_all()

    def of_type(self, job_id: str, *types: str) -> list[CloudEvent]:
        return [e for e in self.events.get(job_id, []) if e.type in types]

    async def wait_terminal(self, job_ids: list[str], within: float = 60.0) -> None:
        """Wait until every job has a terminal event, or fail naming those that have none."""

        async def all_done() -> None:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: all(self.of_type(j, *TERMINAL) for j in job_ids)
                )

        try:
            await asyncio.wait_for(all_done(), within)
        except TimeoutError:
            missing = [j for j in job_ids if not self.of_type(j, *TERMINAL)]
            raise AssertionError(
                f"{len(missing)} of {len(job_ids)} jobs did not finish in "
                f"{within:.0f}s, e.g. {missing[:3]}"
            ) from None


def jpeg_bytes(
    size: tuple[int, int] = (2000, 1500),
    color: tuple[int, int, int] = (200, 40, 40),
    quality: int = 90,
) -> bytes:
    """A JPEG with some structure (a gradient and a block), made in code."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste(color, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def new_job_id() -> str:
    return uuid.uuid4().hex


async def put_source(settings: Settings, job_id: str, data: bytes, ext: str = "jpg") -> str:
    key = f"raw/{job_id}/source.{ext}"
    async with open_storage(settings) as storage:
        await storage.put(key, data, f"image/{ext}")
    return key


async def produce(
    settings: Settings,
    topic: str,
    value: bytes,
    key: str,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    async with kafka.open_producer(settings) as producer:
        await kafka.send(producer, settings.topic(topic), value, key=key, headers=headers or [])


def job_requested(
    job_id: str, key: str, steps: list[StepSpec] | None = None, **data: Any
) -> CloudEvent:
    return make_event(
        JOB_REQUESTED,
        JobRequested(
            job_id=job_id, steps=steps or CONTRACT_STEPS, source=SourceKey(key=key), **data
        ),
    )


async def submit(
    settings: Settings,
    data: bytes | None = None,
    steps: list[StepSpec] | None = None,
    *,
    tenant: str = ANONYMOUS,
    **extra: Any,
) -> str:
    """Store a source and produce its job request for `tenant`, as another system would."""
    job_id = new_job_id()
    key = await put_source(settings, job_id, data or jpeg_bytes())
    event = with_tenant(job_requested(job_id, key, steps, **extra), tenant)
    await produce(settings, "jobs", event.to_bytes(), job_id)
    return job_id


async def wait_until(predicate: Any, within: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


def headers_of(record: Any) -> Mapping[str, bytes]:
    return dict(record.headers or ())


async def delete_topics(settings: Settings) -> None:
    """Remove every topic of a test's prefix, Faust's own (`<app_id>-...`) included, so the
    broker does not grow with every run."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        mine = [
            t
            for t in await admin.list_topics()
            if t.startswith((f"{settings.topic_prefix}.", f"{settings.app_id}-"))
        ]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
