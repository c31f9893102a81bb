"""Hostile jobs from Kafka (issue 10), which no ingress check stands before: each ends failed
with a precise code, the worker process lives on, and a normal job right after completes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixstream.events import JOB_COMPLETED, JOB_FAILED
from pixstream.settings import Settings
from pixstream.spec import StepSpec
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.harness import TERMINAL, jpeg_bytes, submit
from tests.unit import hostile

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.s3,
    pytest.mark.postgres,
]

#: Cheap to send, costly to compute: 49 MP blurred eight times (about 2 s a blur here).
CPU_BOMB = [
    StepSpec(
        id="big",
        op="resize",
        params={"width": 7000, "height": 7000, "fit": "fill", "upscale": True},
    ),
    *(
        StepSpec(id=f"blur{i}", op="blur", params={"radius": 100}, input=f"blur{i - 1}")
        for i in range(1, 9)
    ),
]
CPU_BOMB[1] = CPU_BOMB[1].model_copy(update={"input": "big"})
CPU_BOMB.append(StepSpec(id="out", op="convert", params={"format": "jpeg"}, input="blur8"))


def _code(pipeline: Pipeline, job_id: str) -> str:
    (terminal,) = pipeline.watcher.of_type(job_id, *TERMINAL)
    assert terminal.type == JOB_FAILED, terminal
    codes = {e["code"] for e in terminal.data["errors"]}
    assert len(codes) == 1, codes
    return str(codes.pop())


async def _normal_job_completes(pipeline: Pipeline) -> None:
    job = await submit(pipeline.settings, jpeg_bytes((800, 600)))
    await pipeline.watcher.wait_terminal([job], within=60)
    (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert terminal.type == JOB_COMPLETED, terminal.data


async def test_hostile_sources_from_kafka_fail_with_codes_and_the_worker_lives_on(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    cases: dict[str, tuple[bytes, str]] = {
        "growing-gif": (hostile.growing_gif(), "too_many_pixels"),
        "hidden-tiff-page": (hostile.hidden_page_tiff(), "too_many_pixels"),
        "animation-over-budget": (hostile.animation_gif(40, 1500), "too_many_pixels"),
        "truncated-jpeg": (jpeg_bytes((640, 480))[:1500], "corrupt_image"),
    }
    async with running_pipeline(
        services, template_database, tmp_path, max_pixels=1_000_000
    ) as pipeline:
        jobs = {name: await submit(pipeline.settings, data) for name, (data, _) in cases.items()}
        await pipeline.watcher.wait_terminal(list(jobs.values()), within=60)
        codes = {name: _code(pipeline, job) for name, job in jobs.items()}
        assert codes == {name: code for name, (_, code) in cases.items()}
        await _normal_job_completes(pipeline)
        assert pipeline.worker.alive


async def test_a_cpu_bomb_is_stopped_at_the_render_timeout(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    async with running_pipeline(
        services, template_database, tmp_path, render_timeout_seconds=3.0
    ) as pipeline:
        bomb = await submit(pipeline.settings, jpeg_bytes((1000, 1000)), CPU_BOMB)
        await pipeline.watcher.wait_terminal([bomb], within=60)
        assert _code(pipeline, bomb) == "render_timeout"
        await _normal_job_completes(pipeline)
        assert pipeline.worker.alive
