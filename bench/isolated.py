"""A PixStream of the benchmark's own on the local stack: topics, database and processes.

Every benchmark that runs the real pipeline needs the same things: a topic prefix, consumer
group and database no other run shares (so its figures are not mixed with a test's jobs, and
its leftovers can be removed), `pixstream` child processes started with exactly those
settings, a wait until the ingress answers, and one line saying what machine the figures
came from. They live here so that each benchmark is only what it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

import aiohttp
from pydantic import SecretStr

from pixstream.settings import Settings
from pixstream.topics import apply_topics, load_topics
from tests.chaos import cpu_name, migrated_database
from tests.conftest import drop_database
from tests.harness import delete_topics, settings_env


def new_prefix() -> str:
    """A fresh name for one run's topic prefix, consumer group and database: a benchmark
    that names a log file after its run makes it before `isolated`."""
    return f"bench{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def isolated(
    prefix: str | None = None, *, topics: bool = True, **updates: object
) -> AsyncIterator[Settings]:
    """Settings of the run's own: topic prefix and consumer group `prefix`, a new migrated
    database of that name, and the topics applied (unless `topics=False`: a run that only
    reads the database); `updates` are further fields. Afterwards the topics (Faust's own
    included) and the database are removed, so the local stack does not grow with every run.
    Stop the run's processes before leaving the block."""
    base = Settings()
    prefix = prefix or new_prefix()
    url = await migrated_database(base, prefix)
    settings = base.model_copy(
        update={"topic_prefix": prefix, "app_id": prefix, "database_url": SecretStr(url), **updates}
    )
    try:
        if topics:
            await apply_topics(settings.kafka_bootstrap, load_topics(settings))
        yield settings
    finally:
        await delete_topics(settings)
        await drop_database(base, url)


def start(
    settings: Settings, *argv: str, log: IO[bytes] | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`pixstream *argv` with exactly `settings` (and `env` on top) in its environment; its
    output goes to `log`, or nowhere: a benchmark's figures are what it prints itself."""
    return subprocess.Popen(
        [sys.executable, "-m", "pixstream", *argv],
        env=settings_env(settings, **env),
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
    )


def stop(*procs: subprocess.Popen[bytes], within: float = 60.0) -> None:
    """SIGTERM every one of `procs` at once (they drain in parallel), then wait for each;
    one still running after `within` seconds is killed, so no run leaves a process behind."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def free_port() -> int:
    """A loopback port free now, for an ingress that must not clash with `pixstream dev`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, proc: subprocess.Popen[bytes], within: float = 60.0) -> None:
    """Until the ingress at `url` answers GET /v1/operations with a 200: a request sent
    before would be refused and counted. Exits at once if `proc`, the ingress, has ended."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the ingress exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/v1/operations") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise SystemExit(f"the ingress did not answer in {within:.0f} s")


def machine_line() -> str:
    """The line a benchmark prints above its table: cores, CPU model and Python."""
    cpu, python = cpu_name(), platform.python_version()
    return f"machine: {os.cpu_count()} cores ({cpu}), Python {python}"


def quiet_kafka_logs() -> None:
    """aiokafka logs errors while a run's new topics elect their leaders; a benchmark's
    figures are what matters, and any real failure shows as a failed job."""
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiokafka.consumer.fetcher").setLevel(logging.CRITICAL)
