"""The HTTP ingress against the real PostgreSQL, S3 and Kafka, on a loopback TestServer."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

from pixstream import kafka
from pixstream.db.repository import apply_event
from pixstream.events import (
    JOB_COMPLETED,
    CloudEvent,
    JobCompleted,
    JobRequested,
    OutputInfo,
    SourceKey,
    make_event,
    parse_data,
)
from pixstream.ingress.openapi import document, schema_for
from pixstream.settings import Settings
from pixstream.storage import open_storage
from tests.conftest import ClientFactory
from tests.integration.conftest import SPEC, job_form, jpeg_bytes, png_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]

Client = TestClient[Any, Any]
PROBLEM_TYPE = "application/problem+json"


def conforms(body: Any, component: str) -> None:
    """`body` is valid against the OpenAPI document's schema of `component`."""
    Draft202012Validator(schema_for(component)).validate(body)


async def problem_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM_TYPE
    body: dict[str, Any] = json.loads(await resp.text())
    conforms(body, "Problem")
    assert body["status"] == status
    assert body["instance"] == resp.url.path
    assert body["type"] == f"urn:pixstream:problem:{body['code']}"
    return body


async def jobs_count(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM jobs")
        return n
    finally:
        await conn.close()


async def read_events(settings: Settings, count: int, name: str = "jobs") -> list[CloudEvent]:
    topic = settings.topic(name)
    events: list[CloudEvent] = []
    async with kafka.open_consumer(settings, topic, group_id=f"{settings.app_id}-t") as consumer:
        while len(events) < count:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(events)} of {count} events arrived on {topic} within 10 s"
            for records in batch.values():
                for record in records:
                    event = CloudEvent.parse(record.value)
                    assert record.key == event.data["job_id"].encode()
                    events.append(event)
    return events


# -- POST /v1/jobs ------------------------------------------------------------------------------
async def test_post_job_stores_records_and_publishes(client: Client, topics: Settings) -> None:
    image = jpeg_bytes()
    resp = await client.post("/v1/jobs", data=job_form(image, SPEC))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    conforms(body, "JobAccepted")
    job_id = body["job_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert body == {"job_id": job_id, "status": "queued", "links": {"self": f"/v1/jobs/{job_id}"}}
    assert resp.headers["Location"] == f"/v1/jobs/{job_id}"

    (event,) = await read_events(topics, 1)
    assert event.type == "pixstream.job.requested"
    data = parse_data(event)
    assert isinstance(data, JobRequested)
    assert data.job_id == job_id
    assert data.source == SourceKey(key=f"raw/{job_id}/source.jpg")
    assert [s.id for s in data.steps] == ["web", "webp", "thumb"]
    async with open_storage(topics) as storage:
        assert await storage.get(f"raw/{job_id}/source.jpg") == image

    view = await client.get(f"/v1/jobs/{job_id}")
    assert view.status == 200
    job = await view.json()
    conforms(job, "JobView")
    assert job["status"] == "queued"
    assert job["run"] == 0
    assert job["progress"] == {"steps_total": 3, "steps_done": 0}
    assert job["outputs"] == {}
    assert job["errors"] == []
    assert job["webhook"] is None
    assert job["expired"] is False


async def test_a_batch_job_is_published_to_the_batch_lanes_jobs_topic(
    client: Client, topics: Settings
) -> None:
    # Posted first, the batch job must not be planned ahead of the interactive one: it goes to
    # jobs.batch (planned only while the jobs topic has nothing waiting), the other to jobs.
    ids = {}
    for priority in ("batch", "interactive"):
        resp = await client.post(
            "/v1/jobs", data=job_form(jpeg_bytes(), {**SPEC, "priority": priority})
        )
        assert resp.status == 202, await resp.text()
        ids[priority] = (await resp.json())["job_id"]
    (interactive,) = await read_events(topics, 1)
    (batch,) = await read_events(topics, 1, "jobs.batch")
    assert interactive.data["job_id"] == ids["interactive"]
    assert "priority" not in interactive.data
    assert batch.data["job_id"] == ids["batch"]
    assert batch.data["priority"] == "batch"


async def test_parts_in_either_order_and_a_preset(client: Client, topics: Settings) -> None:
    resp = await client.post(
        "/v1/jobs", data=job_form(png_bytes(), {"preset": "avatar"}, spec_first=True)
    )
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    (event,) = await read_events(topics, 1)
    data = parse_data(event)
    assert isinstance(data, JobRequested)
    assert data.source == SourceKey(key=f"raw/{job_id}/source.png")  # sniffed, not named
    assert [s.id for s in data.steps] == ["square", "avatar"]


async def test_one_byte_over_the_limit_is_413(topics: Settings, make_client: ClientFactory) -> None:
    limit = 4096
    client = await make_client(topics.model_copy(update={"max_upload_bytes": limit}))
    image = jpeg_bytes()
    at_limit = image + b"\0" * (limit - len(image))
    resp = await client.post("/v1/jobs", data=job_form(at_limit))
    assert resp.status == 202, await resp.text()
    resp = await client.post("/v1/jobs", data=job_form(at_limit + b"\0"))
    body = await problem_of(resp, 413)
    assert body["code"] == "too_large"
    assert str(limit) in body["detail"]
    # A declared body far past the limit is refused before any of it is read.
    resp = await client.post(
        "/v1/jobs", data=job_form(image + b"\0" * (limit * 40)), headers={"Expect": "100-continue"}
    )
    await problem_of(resp, 413)
    assert await jobs_count(topics) == 1


async def test_a_pdf_named_jpg_is_415(client: Client, topics: Settings) -> None:
    pdf = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 4
    resp = await client.post("/v1/jobs", data=job_form(pdf, filename="holiday.jpg"))
    body = await problem_of(resp, 415)
    assert body["code"] == "unsupported_format"
    assert "holiday.jpg" in body["detail"]
    assert await jobs_count(topics) == 0


@pytest.mark.parametrize(
    ("spec", "code", "detail"),
    [
        (
            {
                "steps": [
                    {"id": "a", "op": "blur", "params": {"radius": 1}, "input": "b"},
                    {"id": "b", "op": "blur", "params": {"radius": 1}, "input": "a"},
                ]
            },
            "invalid_spec",
            "form a cycle",
        ),
        (
            {"steps": [{"id": "pretty", "op": "beautify"}]},
            "unknown_operation",
            "step 'pretty': unknown operation 'beautify'",
        ),
        (
            {"steps": [{"id": "small", "op": "thumbnail", "params": {"size": -3}}]},
            "invalid_params",
            "step 'small': params.size",
        ),
        ('{"steps": [', "invalid_spec", "spec: not valid JSON"),
        ({"preset": "nope"}, "invalid_spec", "unknown preset 'nope'"),
        (
            {**SPEC, "webhook_url": "http://127.0.0.1:8080/hook"},
            "destination_refused",
            "loopback",
        ),
    ],
)
async def test_bad_specs_are_422_naming_the_problem(
    client: Client, topics: Settings, spec: Any, code: str, detail: str
) -> None:
    resp = await client.post("/v1/jobs", data=job_form(jpeg_bytes(), spec))
    body = await problem_of(resp, 422)
    assert body["code"] == code
    assert detail in body["detail"]
    assert await jobs_count(topics) == 0


async def test_rate_limit_is_429_with_retry_after(
    topics: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(topics.model_copy(update={"rate_limit_per_minute": 2}))
    for _ in range(2):
        assert (await client.post("/v1/jobs", data=job_form())).status == 202
    resp = await client.post("/v1/jobs", data=job_form())
    body = await problem_of(resp, 429)
    assert body["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 31  # a token every 30 s at 2/minute
    assert (await client.get("/v1/operations")).status == 200  # only job creation is limited


# -- malformed requests -------------------------------------------------------------------------
def _raw_multipart(body: bytes, boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_malformed_requests_are_4xx_problems_never_500(client: Client) -> None:
    spec = json.dumps(SPEC)
    only_spec = aiohttp.FormData()
    only_spec.add_field("spec", spec)
    only_file = aiohttp.FormData()
    only_file.add_field("file", jpeg_bytes(), filename="a.jpg")
    twice = job_form()
    twice.add_field("spec", spec)
    extra = job_form()
    extra.add_field("comment", "hello")
    empty_file = job_form(b"")
    garbage, garbage_headers = _raw_multipart(b"--XyZ\r\nContent-Disposition: form-da")
    no_boundary = {"Content-Type": "multipart/form-data"}
    # Found by schemathesis: a control character in a part's header once reached a 500.
    bad_part_header, bad_part_headers = _raw_multipart(
        b'--XyZ\r\nContent-Disposition: form-data; name="a\x11b"\r\n\r\nx\r\n--XyZ--\r\n'
    )
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("json body", {"json": SPEC}, 400),
        ("no body", {}, 400),
        ("only spec", {"data": only_spec}, 400),
        ("only file", {"data": only_file}, 400),
        ("spec twice", {"data": twice}, 400),
        ("unexpected part", {"data": extra}, 400),
        ("empty file", {"data": empty_file}, 400),
        ("truncated multipart", {"data": garbage, "headers": garbage_headers}, 400),
        ("no boundary", {"data": b"--x\r\n", "headers": no_boundary}, 400),
        ("bad part header", {"data": bad_part_header, "headers": bad_part_headers}, 400),
        ("bad idempotency key", {"data": job_form(), "headers": {"Idempotency-Key": "a b"}}, 400),
        ("non-JSON spec", {"data": job_form(spec="not json")}, 422),
        ("spec not an object", {"data": job_form(spec="[1, 2]")}, 422),
        ("spec not UTF-8", {"data": job_form(spec=b"\xff\xfe".decode("latin-1"))}, 422),
    ]
    for name, kwargs, status in cases:
        resp = await client.post("/v1/jobs", **kwargs)
        assert resp.status == status, f"{name}: {resp.status} {await resp.text()}"
        await problem_of(resp, status)

    resp = await client.put("/v1/jobs")
    body = await problem_of(resp, 405)
    assert "PUT" in body["detail"]
    assert "POST" in resp.headers["Allow"]
    await problem_of(await client.get("/v2/nothing"), 404)
    # Headers past aiohttp's limit are refused by its parser with a 4xx before any handler.
    resp = await client.get("/v1/operations", headers={"X-Big": "x" * 20_000})
    assert 400 <= resp.status < 500


# -- GET /v1/jobs/{id} --------------------------------------------------------------------------
async def test_unknown_job_is_404(client: Client) -> None:
    body = await problem_of(await client.get(f"/v1/jobs/{uuid.uuid4().hex}"), 404)
    assert body["code"] == "not_found"
    await problem_of(await client.get("/v1/jobs/not%20an%20id"), 404)


async def _completed_job(settings: Settings, content: bytes, *, created_at: datetime) -> str:
    """A job recorded through apply_event, with a real output object in S3."""
    job_id = uuid.uuid4().hex
    key = f"processed/{job_id}/thumb.jpg"
    async with open_storage(settings) as storage:
        await storage.put(key, content, "image/jpeg")
    out = OutputInfo(key=key, format="jpeg", width=64, height=48, bytes=len(content))
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await conn.execute(
            "INSERT INTO jobs (job_id, status, steps_total, spec, source_key, created_at, "
            "updated_at) VALUES ($1, 'queued', 1, $2::jsonb, $3, $4, $4)",
            job_id,
            json.dumps({"steps": [{"id": "thumb", "op": "thumbnail", "params": {"size": 64}}]}),
            f"raw/{job_id}/source.jpg",
            created_at,
        )
        done = JobCompleted(job_id=job_id, outputs={"thumb": out})
        await apply_event(conn, make_event(JOB_COMPLETED, done))
    finally:
        await conn.close()
    return job_id


async def test_outputs_have_stable_presigned_urls_that_download(
    client: Client, topics: Settings
) -> None:
    content = jpeg_bytes((64, 48), (10, 200, 10))
    job_id = await _completed_job(topics, content, created_at=datetime.now(UTC))
    first = await (await client.get(f"/v1/jobs/{job_id}")).json()
    second = await (await client.get(f"/v1/jobs/{job_id}")).json()
    conforms(first, "JobView")
    assert first["status"] == "completed"
    assert first["progress"] == {"steps_total": 1, "steps_done": 1}
    out = first["outputs"]["thumb"]
    assert out["key"] == f"processed/{job_id}/thumb.jpg"
    assert (out["format"], out["width"], out["height"], out["bytes"]) == (
        "jpeg",
        64,
        48,
        len(content),
    )
    assert second["outputs"]["thumb"]["url"] == out["url"]  # one signing window: one URL
    async with aiohttp.ClientSession() as http, http.get(out["url"]) as resp:
        assert resp.status == 200
        assert await resp.read() == content


async def test_a_job_shows_its_current_run(client: Client, topics: Settings) -> None:
    job_id = await _completed_job(topics, jpeg_bytes(), created_at=datetime.now(UTC))
    conn = await asyncpg.connect(topics.database_url.get_secret_value())
    try:
        await conn.execute("UPDATE jobs SET run = 2 WHERE job_id = $1", job_id)
    finally:
        await conn.close()
    view = await (await client.get(f"/v1/jobs/{job_id}")).json()
    conforms(view, "JobView")
    assert view["run"] == 2


async def test_a_job_past_retention_is_expired_without_urls(
    client: Client, topics: Settings
) -> None:
    created = datetime.now(UTC) - timedelta(seconds=topics.retention_seconds + 60)
    job_id = await _completed_job(topics, jpeg_bytes(), created_at=created)
    view = await (await client.get(f"/v1/jobs/{job_id}")).json()
    conforms(view, "JobView")
    assert view["expired"] is True
    assert datetime.fromisoformat(view["expires_at"]) == created + timedelta(
        seconds=topics.retention_seconds
    )
    assert view["outputs"]["thumb"]["url"] is None
    assert view["outputs"]["thumb"]["key"] == f"processed/{job_id}/thumb.jpg"


async def test_webhook_delivery_is_reported(client: Client, topics: Settings) -> None:
    job_id = await _completed_job(topics, jpeg_bytes(), created_at=datetime.now(UTC))
    conn = await asyncpg.connect(topics.database_url.get_secret_value())
    try:
        await conn.execute(
            "INSERT INTO webhook_deliveries (event_id, job_id, url, body, attempts, "
            "last_status, last_error) VALUES ($1, $2, 'https://example.com/h', 'x', 1, 503, "
            "'HTTP 503')",
            f"{job_id}.job.completed",
            job_id,
        )
    finally:
        await conn.close()
    view = await (await client.get(f"/v1/jobs/{job_id}")).json()
    conforms(view, "JobView")
    hook = view["webhook"]
    assert (hook["state"], hook["attempts"], hook["last_status_code"], hook["last_error"]) == (
        "pending",
        1,
        503,
        "HTTP 503",
    )
    assert hook["next_attempt_at"] is not None


# -- the other routes ---------------------------------------------------------------------------
async def test_catalogue_presets_health_and_openapi(client: Client) -> None:
    resp = await client.get("/openapi.json")
    doc = await resp.json()
    assert doc == document()
    assert doc["openapi"].startswith("3.1")
    ops = await (await client.get("/v1/operations")).json()
    conforms(ops, "OperationList")
    assert {"resize", "thumbnail", "convert"} <= {op["name"] for op in ops["operations"]}
    presets = await (await client.get("/v1/presets")).json()
    conforms(presets, "PresetList")
    assert {p["name"] for p in presets["presets"]} == {"web", "avatar"}
    resp = await client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    conforms(health, "HealthView")
    assert set(health["checks"]) == {"kafka", "postgres", "s3"}


async def test_metrics_count_requests_uploads_and_jobs(client: Client) -> None:
    assert (await client.post("/v1/jobs", data=job_form())).status == 202
    await client.get(f"/v1/jobs/{uuid.uuid4().hex}")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert 'pixstream_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert "pixstream_http_request_seconds_bucket" in text
    assert "pixstream_upload_bytes_count" in text
    assert 'pixstream_jobs{status="queued"} 1.0' in text
    assert "pixstream_op_seconds" in text  # the worker's metrics are declared too


async def test_the_web_page_and_its_script_are_served(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert '<script src="/static/app.js">' in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # no external resources
    resp = await client.get("/static/app.js")
    assert resp.status == 200
    script = await resp.text()
    assert "/v1/jobs" in script
    assert "localStorage" in script
    await problem_of(await client.get("/static/missing.js"), 404)
