"""Hostile submissions at the real ingress (issue 10): answered with a 4xx or a 503 at once,
nothing recorded, and a normal submission right after is accepted."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from pixstream.ingress.admission import UPLOAD_SLOTS
from pixstream.settings import Settings
from tests.conftest import ClientFactory
from tests.harness import wait_until
from tests.integration.conftest import SPEC, job_form
from tests.integration.test_ingress import Client, jobs_count, problem_of
from tests.unit import hostile
from tests.unit.test_limits import EXPLODING

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]


def png_1x1() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


async def test_the_exploding_spec_is_422_from_headers_alone(
    client: Client, topics: Settings
) -> None:
    resp = await client.post("/v1/jobs", data=job_form(png_1x1(), EXPLODING, filename="x.png"))
    body = await problem_of(resp, 422)
    assert body["code"] == "too_many_pixels"
    assert "step 'huge'" in body["detail"]
    assert await jobs_count(topics) == 0
    resp = await client.post("/v1/jobs", data=job_form(png_1x1(), SPEC, filename="x.png"))
    assert resp.status == 202, await resp.text()


async def test_a_spec_of_64_kb_of_brackets_is_422(client: Client, topics: Settings) -> None:
    resp = await client.post("/v1/jobs", data=job_form(png_1x1(), "[" * 65536))
    body = await problem_of(resp, 422)
    assert body["code"] == "invalid_spec"
    assert "nested too deeply" in body["detail"]
    assert await jobs_count(topics) == 0


@pytest.mark.parametrize(
    ("image", "max_pixels"),
    [
        (hostile.growing_gif(), 1_000_000),  # frame 2 grows the canvas to 3000x3000
        (hostile.hidden_page_tiff(), 1_000_000),  # page 2 is 4000x4000
        (hostile.animation_gif(40, 1500), 50_000_000),  # 40 x 2.25 MP
    ],
    ids=["growing-gif", "hidden-tiff-page", "animation-over-budget"],
)
async def test_hostile_images_are_422_too_many_pixels(
    topics: Settings, make_client: ClientFactory, image: bytes, max_pixels: int
) -> None:
    client = await make_client(topics.model_copy(update={"max_pixels": max_pixels}))
    resp = await client.post("/v1/jobs", data=job_form(image, SPEC))
    body = await problem_of(resp, 422)
    assert body["code"] == "too_many_pixels"
    assert await jobs_count(topics) == 0


async def test_uploads_past_the_cap_are_503_with_retry_after(
    topics: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(topics.model_copy(update={"max_uploads_in_flight": 1}))
    boundary = uuid.uuid4().hex
    head, tail = _multipart(boundary, png_1x1(), SPEC)
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield head
        await release.wait()  # the upload is in flight, holding the only slot
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    first = asyncio.create_task(client.post("/v1/jobs", data=slow_body(), headers=headers))
    slots = client.app[UPLOAD_SLOTS]

    async def holding() -> bool:  # the slow upload has the only slot
        return bool(slots._free.locked())

    assert await wait_until(holding, within=20)
    resp = await client.post("/v1/jobs", data=job_form(png_1x1(), SPEC, filename="x.png"))
    body = await problem_of(resp, 503)
    assert resp.headers["Retry-After"] == "1"
    assert "1 uploads are already in flight" in body["detail"]
    release.set()
    assert (await first).status == 202
    resp = await client.post("/v1/jobs", data=job_form(png_1x1(), SPEC, filename="x.png"))
    assert resp.status == 202, await resp.text()  # the slot was given back
    assert await jobs_count(topics) == 2


def _multipart(boundary: str, image: bytes, spec: Any) -> tuple[bytes, bytes]:
    """A two-part body split inside the file part."""
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="spec"\r\n'
            "Content-Type: application/json\r\n\r\n"
            f"{json.dumps(spec)}\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    cut = len(body) - len(image) // 2 - 20
    return body[:cut], body[cut:]
