"""Idempotency-Key on POST /v1/jobs: one job per key and request, even under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from pixstream.settings import Settings
from tests.integration.conftest import SPEC, job_form, jpeg_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]

Client = TestClient[Any, Any]


async def job_ids(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return [r["job_id"] for r in await conn.fetch("SELECT job_id FROM jobs")]
    finally:
        await conn.close()


async def test_same_key_same_request_is_the_same_job(client: Client, topics: Settings) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    image = jpeg_bytes()
    first = await client.post("/v1/jobs", data=job_form(image, SPEC), headers=key)
    assert first.status == 202
    # The same request, its parts in the other order: still the same request.
    again = await client.post("/v1/jobs", data=job_form(image, SPEC, spec_first=True), headers=key)
    assert again.status == 202
    assert (await again.json()) == (await first.json())
    assert again.headers["Location"] == first.headers["Location"]
    assert await job_ids(topics) == [(await first.json())["job_id"]]


async def test_same_key_other_request_is_422(client: Client, topics: Settings) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    image = jpeg_bytes()
    assert (await client.post("/v1/jobs", data=job_form(image, SPEC), headers=key)).status == 202
    other_spec = {"steps": [{"id": "t", "op": "thumbnail", "params": {"size": 8}}]}
    resp = await client.post("/v1/jobs", data=job_form(image, other_spec), headers=key)
    assert resp.status == 422
    body = await resp.json(content_type="application/problem+json")
    assert body["code"] == "idempotency_key_reused"
    other_file = jpeg_bytes(colour=(1, 2, 3))
    resp = await client.post("/v1/jobs", data=job_form(other_file, SPEC), headers=key)
    assert resp.status == 422
    assert len(await job_ids(topics)) == 1


async def test_twenty_concurrent_identical_requests_make_one_job(
    client: Client, topics: Settings
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    image = jpeg_bytes()

    async def submit() -> tuple[int, Any]:
        resp = await client.post("/v1/jobs", data=job_form(image, SPEC), headers=key)
        return resp.status, await resp.json(content_type=None)

    results = await asyncio.gather(*(submit() for _ in range(20)))
    assert {status for status, _ in results} == {202}
    assert len({body["job_id"] for _, body in results}) == 1
    assert await job_ids(topics) == [results[0][1]["job_id"]]
