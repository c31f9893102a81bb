"""The pipeline under test: a `pixstream worker` process with its own topics, consumer group
and database. A module shares one (Faust takes seconds to join a group); tests that kill or
starve a worker start their own with `running_pipeline`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pixstream.settings import Settings
from pixstream.topics import apply_topics, load_topics
from tests.conftest import ClientFactory, create_database, drop_database, isolated
from tests.e2e.receiver import Receiver
from tests.harness import EventWatcher, WorkerProcess, delete_topics, submit

STARTUP_SECONDS = 90.0


@dataclass
class Pipeline:
    settings: Settings
    worker: WorkerProcess
    watcher: EventWatcher

    def restart_worker(self) -> None:
        self.worker = WorkerProcess(
            self.settings,
            self.worker.log_path,
            *self.worker.args,
            **{k: v for k, v in self.worker.env.items() if k.startswith("PIXSTREAM_")},
        ).start()


@asynccontextmanager
async def running_pipeline(
    services: Settings,
    template: str,
    workdir: Path,
    *worker_args: str,
    extra_env: Mapping[str, str] | None = None,
    before_start: Callable[[Settings], Awaitable[None]] | None = None,
    **updates: Any,
) -> AsyncIterator[Pipeline]:
    """A database, declared topics, a running worker and a watcher; all gone afterwards.
    `before_start` is given the pipeline's settings once its topics exist."""
    url = await create_database(services, template)
    settings = isolated(services, url, **updates)
    await apply_topics(settings.kafka_bootstrap, load_topics(settings))
    if before_start is not None:
        await before_start(settings)
    worker = WorkerProcess(
        settings, workdir / f"worker-{settings.topic_prefix}.log", *worker_args, **(extra_env or {})
    ).start()
    pipeline = Pipeline(settings, worker, EventWatcher(settings))
    try:
        async with pipeline.watcher.running():
            probe = await submit(settings)  # the worker is ready once a job goes through
            try:
                await pipeline.watcher.wait_terminal([probe], STARTUP_SECONDS)
            except AssertionError:
                pytest.fail(f"the worker did not process a job:\n{pipeline.worker.log()}")
            yield pipeline
    finally:
        pipeline.worker.stop()
        await drop_database(services, url)
        await delete_topics(settings)


@pytest.fixture(scope="module")
async def pipeline(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        services, template_database, tmp_path_factory.mktemp("pipeline")
    ) as running:
        yield running


@pytest.fixture
async def api(pipeline: Pipeline, make_client: ClientFactory) -> TestClient[Any, Any]:
    """The real ingress in front of the module's pipeline (its own, where a module defines
    `pipeline`), on a loopback TestServer."""
    return await make_client(pipeline.settings)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()
