"""`analyze` and HEIC input through the real pipeline: the HTTP API, a `pixstream worker`,
Kafka, S3 and PostgreSQL. The report must be the same in the job record, the job.completed
event and the webhook; a HEIC upload is admitted, decoded upright and rendered."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import ExifTags, Image

from pixstream.events import JOB_COMPLETED
from pixstream.settings import Settings
from pixstream.storage import s3_client
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.e2e.receiver import WEBHOOK_SETTINGS, Receiver
from tests.harness import TERMINAL, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

WITHIN = 60.0  # generous: a wait, not a speed requirement


@pytest.fixture(scope="module")
async def pipeline(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        services, template_database, tmp_path_factory.mktemp("analyze"), **WEBHOOK_SETTINGS
    ) as running:
        yield running


def photo(fmt: str, size: tuple[int, int], orientation: int) -> bytes:
    """Blue with a red block, stored sideways (EXIF orientation), with a GPS position."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1] // 4))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "PixStream Labs"
    location = exif.get_ifd(ExifTags.IFD.GPSInfo)
    location[ExifTags.GPS.GPSLatitudeRef] = "N"
    location[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    out = io.BytesIO()
    image.save(out, format=fmt, quality=90, exif=exif.tobytes() if fmt == "HEIF" else exif)
    return out.getvalue()


async def post_job(api: TestClient[Any, Any], data: bytes, spec: dict[str, Any]) -> Any:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="upload", content_type="application/octet-stream")
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    return await api.post("/v1/jobs", data=form)


async def finished(api: TestClient[Any, Any], job_id: str) -> dict[str, Any]:
    for _ in range(int(WITHIN / 0.1)):
        job: dict[str, Any] = await (await api.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def object_keys(settings: Settings, prefix: str) -> list[str]:
    async with s3_client(settings) as client:
        resp = await client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


async def download(url: str) -> Image.Image:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return Image.open(io.BytesIO(await resp.read()))


async def test_the_report_is_in_the_record_the_event_and_the_webhook(
    pipeline: Pipeline, api: TestClient[Any, Any]
) -> None:
    receiver = await Receiver().start()
    try:
        spec = {
            "steps": [
                {"id": "info", "op": "analyze", "params": {"colors": 3}},
                {"id": "thumb", "op": "thumbnail", "params": {"size": 64}},
            ],
            "webhook_url": receiver.url,
        }
        resp = await post_job(api, photo("JPEG", (400, 200), orientation=6), spec)
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
        job = await finished(api, job_id)
        await pipeline.watcher.wait_terminal([job_id], WITHIN)
        assert await wait_until(lambda: _hit(receiver, job_id), within=WITHIN)
    finally:
        await receiver.stop()

    assert job["status"] == "completed", job
    info = job["outputs"]["info"]
    assert set(info) == {"kind", "data"}, (job_id, info.get("reused_from"))
    assert info["kind"] == "metadata"
    report = info["data"]
    assert (report["width"], report["height"], report["format"]) == (200, 400, "jpeg")
    assert report["exif"]["Make"] == "PixStream Labs"
    assert report["exif"]["Orientation"] == 6
    assert "GPS" not in json.dumps(report)
    assert report["dominant_colors"][0].startswith("#")
    assert (report["frames"], report["animated"], report["has_alpha"]) == (1, False, False)
    assert job["outputs"]["thumb"]["kind"] == "image"
    assert (job["outputs"]["thumb"]["width"], job["outputs"]["thumb"]["height"]) == (32, 64)

    (terminal,) = pipeline.watcher.of_type(job_id, *TERMINAL)
    assert terminal.type == JOB_COMPLETED
    assert terminal.data["outputs"]["info"] == info  # the same report, to the byte
    (hit,) = receiver.for_job(job_id)
    delivered = json.loads(hit.body)
    assert delivered["data"]["outputs"]["info"] == info
    assert delivered["data"]["outputs"]["thumb"]["url"]  # images are linked, reports are not
    assert "url" not in delivered["data"]["outputs"]["info"]

    # A report is no object: only the thumbnail was written.
    assert await object_keys(pipeline.settings, f"processed/{job_id}/") == [
        f"processed/{job_id}/thumb.jpg"
    ]


async def _hit(receiver: Receiver, job_id: str) -> bool:
    return bool(receiver.for_job(job_id))


async def test_a_heic_upload_is_admitted_and_rendered_upright(
    api: TestClient[Any, Any],
) -> None:
    spec = {
        "steps": [
            {"id": "info", "op": "analyze"},
            {"id": "web", "op": "resize", "params": {"width": 100}},
        ]
    }
    resp = await post_job(api, photo("HEIF", (400, 200), orientation=6), spec)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    job = await finished(api, job_id)

    assert job["status"] == "completed", job
    web = job["outputs"]["web"]
    assert (web["format"], web["width"], web["height"]) == ("jpeg", 100, 200)
    image = await download(web["url"])
    assert (image.format, image.size) == ("JPEG", (100, 200))
    report = job["outputs"]["info"]["data"]
    assert (report["format"], report["width"], report["height"]) == ("heif", 200, 400)
    assert report["exif"]["Make"] == "PixStream Labs"


async def test_a_step_reading_an_analyze_step_is_refused_with_422(
    api: TestClient[Any, Any],
) -> None:
    spec = {
        "steps": [
            {"id": "info", "op": "analyze"},
            {"id": "thumb", "op": "thumbnail", "params": {"size": 64}, "input": "info"},
        ]
    }
    resp = await post_job(api, photo("JPEG", (40, 20), orientation=1), spec)
    assert resp.status == 422
    problem = await resp.json()
    assert problem["code"] == "invalid_spec"
    assert "input 'info' is an analyze step" in problem["detail"]
