"""The product end to end, as a user meets it: the HTTP API with a real worker behind it,
jobs from other systems by URL, and the worker's own metrics."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from pixstream.events import JOB_COMPLETED, JOB_FAILED
from pixstream.settings import Settings
from tests.conftest import ClientFactory
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.harness import CONTRACT_SPEC, TERMINAL, jpeg_bytes, new_job_id, produce, wait_until

Handler = Callable[[web.Request], Awaitable[web.Response]]
pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
async def product(
    services: Settings,
    template_database: str,
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
) -> AsyncIterator[tuple[Pipeline, int]]:
    """A worker that may fetch sources from loopback over https (trusting the test CA)."""
    workdir = tmp_path_factory.mktemp("product")
    bundle = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    metrics_port = _free_port()
    async with running_pipeline(
        services,
        template_database,
        workdir,
        source_allow_private=True,
        extra_env={
            "SSL_CERT_FILE": str(bundle),
            "PIXSTREAM_WORKER_METRICS_PORT": str(metrics_port),
        },
    ) as pipeline:
        yield pipeline, metrics_port


@pytest.fixture
async def api(product: tuple[Pipeline, int], make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client(product[0].settings)


async def test_upload_a_photo_and_download_every_promised_output(
    api: TestClient[Any, Any],
) -> None:
    form = aiohttp.FormData()
    form.add_field(
        "file", jpeg_bytes((3000, 2000)), filename="photo.jpg", content_type="image/jpeg"
    )
    form.add_field("spec", json.dumps(CONTRACT_SPEC), content_type="application/json")
    resp = await api.post("/v1/jobs", data=form)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]

    for _ in range(300):
        job = await (await api.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "completed", job
    assert job["errors"] == []
    assert job["expired"] is False
    assert set(job["outputs"]) == {"webp", "thumb"}
    expected = {"webp": ("WEBP", (1024, 683)), "thumb": ("JPEG", (256, 171))}
    async with aiohttp.ClientSession() as http:
        for step, output in job["outputs"].items():
            async with http.get(output["url"]) as download:
                assert download.status == 200
                body = await download.read()
            image = Image.open(io.BytesIO(body))
            assert (image.format, image.size) == expected[step]
            assert (output["width"], output["height"]) == expected[step][1]
            assert output["bytes"] == len(body)


async def _https_server(ca: trustme.CA, handler: Handler, path: str) -> tuple[web.AppRunner, int]:
    """An https server on 127.0.0.1 whose certificate the test CA signed."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ssl_context)
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return runner, port


async def _https_source(ca: trustme.CA, body: bytes) -> tuple[web.AppRunner, int]:
    async def image(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    return await _https_server(ca, image, "/photo.jpg")


def _url_job(job_id: str, url: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"{job_id}.job.requested",
            "source": "/other-system",
            "type": "pixstream.job.requested",
            "time": "2026-11-26T00:00:00Z",
            "datacontenttype": "application/json",
            "data": {"job_id": job_id, "steps": CONTRACT_SPEC["steps"], "source": {"url": url}},
        }
    ).encode()


async def test_a_job_from_another_system_by_https_url_is_processed_and_visible(
    product: tuple[Pipeline, int],
    api: TestClient[Any, Any],
    ca: trustme.CA,
) -> None:
    pipeline = product[0]
    runner, port = await _https_source(ca, jpeg_bytes((1600, 1200)))
    try:
        job = new_job_id()
        await produce(
            pipeline.settings, "jobs", _url_job(job, f"https://localhost:{port}/photo.jpg"), job
        )
        await pipeline.watcher.wait_terminal([job])
    finally:
        await runner.cleanup()
    (terminal,) = pipeline.watcher.of_type(job, *TERMINAL)
    assert terminal.type == JOB_COMPLETED, terminal.data
    assert terminal.data["outputs"]["webp"]["width"] == 1024

    for _ in range(200):  # the recorder projects it like any other job
        view = await (await api.get(f"/v1/jobs/{job}")).json()
        if view.get("status") == "completed":
            break
        await asyncio.sleep(0.1)
    assert view["status"] == "completed"
    assert set(view["outputs"]) == {"webp", "thumb"}


async def test_a_source_url_failing_permanently_fails_the_job(
    product: tuple[Pipeline, int],
    ca: trustme.CA,
) -> None:
    pipeline = product[0]
    runner, port = await _https_source(ca, b"%PDF-1.4 not an image")
    try:
        not_image, missing = new_job_id(), new_job_id()
        await produce(
            pipeline.settings,
            "jobs",
            _url_job(not_image, f"https://127.0.0.1:{port}/photo.jpg"),
            not_image,
        )
        await produce(
            pipeline.settings,
            "jobs",
            _url_job(missing, f"https://127.0.0.1:{port}/nothing.jpg"),
            missing,
        )
        await pipeline.watcher.wait_terminal([not_image, missing])
    finally:
        await runner.cleanup()
    codes = {
        j: pipeline.watcher.of_type(j, JOB_FAILED)[0].data["errors"][0]["code"]
        for j in (not_image, missing)
    }
    assert codes == {not_image: "unsupported_format", missing: "source_unavailable"}


async def test_with_the_guard_on_a_loopback_source_is_refused_unfetched(
    services: Settings,
    template_database: str,
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    hits: list[str] = []

    async def count(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=jpeg_bytes((64, 64)), content_type="image/jpeg")

    runner, port = await _https_server(ca, count, "/{name}")
    try:
        async with running_pipeline(services, template_database, tmp_path) as pipeline:
            jobs = {
                new_job_id(): f"https://127.0.0.1:{port}/a.jpg",
                new_job_id(): f"https://localhost:{port}/b.jpg",
                new_job_id(): f"https://[::ffff:127.0.0.1]:{port}/c.jpg",
            }
            for job, url in jobs.items():
                await produce(pipeline.settings, "jobs", _url_job(job, url), job)
            await pipeline.watcher.wait_terminal(list(jobs))
            for job in jobs:
                (failed,) = pipeline.watcher.of_type(job, JOB_FAILED)
                assert failed.data["errors"][0]["code"] == "destination_refused"
    finally:
        await runner.cleanup()
    assert hits == []


async def test_the_worker_serves_its_metrics(product: tuple[Pipeline, int]) -> None:
    _, port = product
    text = ""

    async def counted() -> bool:  # a task is counted once it has kept its renders
        nonlocal text
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            text = await resp.text()
        return 'pixstream_tasks_total{op="resize",outcome="completed"}' in text

    assert await wait_until(counted, within=20)
    assert "pixstream_op_seconds_bucket" in text
    jobs_topic = product[0].settings.topic("jobs")
    assert f'pixstream_consumer_lag{{topic="{jobs_topic}"}}' in text
