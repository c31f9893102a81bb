"""Nothing lost: a worker killed mid-run, S3 down for a while, dead letters re-driven."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pixstream.events import JOB_COMPLETED
from pixstream.settings import Settings
from pixstream.stack.minio import MinioService
from pixstream.storage import ensure_bucket
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.harness import (
    TERMINAL,
    job_requested,
    jpeg_bytes,
    new_job_id,
    produce,
    put_source,
    settings_env,
    submit,
    wait_until,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.s3,
    pytest.mark.postgres,
]

PRIVATE_S3 = "http://127.0.0.1:29000"


def _terminal_counts(pipeline: Pipeline, jobs: list[str]) -> dict[str, int]:
    return {j: len(pipeline.watcher.of_type(j, *TERMINAL)) for j in jobs}


async def test_worker_killed_mid_run_loses_nothing_and_repeats_nothing(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    async with running_pipeline(services, template_database, tmp_path) as pipeline:
        data = jpeg_bytes((1600, 1200))
        jobs = await asyncio.gather(*(submit(pipeline.settings, data) for _ in range(100)))

        async def quarter_done() -> bool:
            return sum(_terminal_counts(pipeline, jobs).values()) >= 25

        assert await wait_until(quarter_done, within=120, interval=0.05)
        pipeline.worker.kill()  # SIGKILL: no commit, no flush, no goodbye
        done_at_kill = sum(_terminal_counts(pipeline, jobs).values())
        assert done_at_kill < 100, "the worker finished before it could be killed"

        pipeline.restart_worker()
        await pipeline.watcher.wait_terminal(jobs, within=240)
        counts = _terminal_counts(pipeline, jobs)
        assert set(counts.values()) == {1}, {j: c for j, c in counts.items() if c != 1}
        assert all(pipeline.watcher.of_type(j, JOB_COMPLETED) for j in jobs)


@pytest.fixture(scope="module")
def private_s3(
    tmp_path_factory: pytest.TempPathFactory, services: Settings
) -> Iterator[MinioService]:
    """A MinIO of this module's own, so stopping it disturbs no other test."""
    settings = services.model_copy(update={"s3_endpoint_url": PRIVATE_S3})
    minio = MinioService(tmp_path_factory.mktemp("minio"), settings)
    minio.up()
    asyncio.run(ensure_bucket(settings))
    try:
        yield minio
    finally:
        minio.down()


@pytest.fixture
async def s3_pipeline(
    services: Settings, template_database: str, tmp_path: Path, private_s3: MinioService
) -> AsyncIterator[Pipeline]:
    private_s3.up()
    async with running_pipeline(
        services, template_database, tmp_path, s3_endpoint_url=PRIVATE_S3, retry_attempts=3
    ) as pipeline:
        yield pipeline
    private_s3.up()


async def test_s3_down_for_20_seconds_delays_jobs_but_loses_none(
    s3_pipeline: Pipeline, private_s3: MinioService
) -> None:
    settings = s3_pipeline.settings
    jobs = [new_job_id() for _ in range(10)]
    keys = await asyncio.gather(*(put_source(settings, j, jpeg_bytes((800, 600))) for j in jobs))
    private_s3.down()
    for job, key in zip(jobs, keys, strict=True):
        await produce(settings, "jobs", job_requested(job, key).to_bytes(), job)
    await asyncio.sleep(20)
    assert not any(_terminal_counts(s3_pipeline, jobs).values())  # nothing could finish
    private_s3.up()
    await s3_pipeline.watcher.wait_terminal(jobs, within=180)
    assert all(s3_pipeline.watcher.of_type(j, JOB_COMPLETED) for j in jobs)
    assert set(_terminal_counts(s3_pipeline, jobs).values()) == {1}


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixstream", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_dlq_replay_redrives_a_dead_letter_once_the_cause_is_fixed(
    services: Settings, template_database: str, tmp_path: Path, private_s3: MinioService
) -> None:
    private_s3.up()
    async with running_pipeline(
        services, template_database, tmp_path, s3_endpoint_url=PRIVATE_S3, retry_attempts=1
    ) as pipeline:
        settings = pipeline.settings
        job = new_job_id()
        key = await put_source(settings, job, jpeg_bytes((640, 480)))
        private_s3.down()
        try:
            await produce(settings, "jobs", job_requested(job, key).to_bytes(), job)
            # One retry (5 s), then the budget is spent and the request is dead-lettered.
            for _ in range(120):
                listing = _cli(settings, "dlq", "list")
                if job in listing.stdout:
                    break
                await asyncio.sleep(1)
            assert job in listing.stdout, listing.stdout + listing.stderr
            assert "TransientError" in listing.stdout
            assert f"from {settings.topic('jobs')}@" in listing.stdout
            assert "attempts=2" in listing.stdout
        finally:
            private_s3.up()

        dry = _cli(settings, "dlq", "replay", "--all", "--dry-run")
        assert "1 would replay" in dry.stdout, dry.stdout + dry.stderr
        first = _cli(settings, "dlq", "replay", "--all")
        assert "1 replayed, 0 skipped" in first.stdout, first.stdout + first.stderr
        await pipeline.watcher.wait_terminal([job], within=60)
        again = _cli(settings, "dlq", "replay", "--all")
        assert "0 replayed, 1 skipped" in again.stdout, again.stdout + again.stderr
        marker = await submit(settings)  # processed after anything a second replay could send
        await pipeline.watcher.wait_terminal([marker])
        (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
        assert terminal.type == JOB_COMPLETED
        requested = [e for e in pipeline.watcher.events[job] if e.type == "pixstream.job.requested"]
        assert len(requested) == 1  # the replayed request was planned exactly once
