"""Tenants and API keys at the ingress: who may read and write what (contract v2)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from pixstream.db import tenants
from pixstream.settings import Settings
from tests.conftest import ClientFactory
from tests.integration.conftest import SPEC, job_form, jpeg_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]

Client = TestClient[Any, Any]


async def new_key(settings: Settings, tenant: str) -> tuple[str, dict[str, str]]:
    """(key id, the Authorization header of a new key for `tenant`)."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        info, key = await tenants.create_key(conn, tenant, "test")
    finally:
        await conn.close()
    return info.key_id, {"Authorization": f"Bearer {key}"}


async def post(client: Client, headers: dict[str, str] | None = None, spec: Any = None) -> Any:
    return await client.post("/v1/jobs", data=job_form(jpeg_bytes(), spec or SPEC), headers=headers)


async def created(client: Client, headers: dict[str, str] | None = None) -> str:
    resp = await post(client, headers)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["job_id"])


async def problem(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type="application/problem+json")
    return body


async def test_a_tenant_cannot_see_another_tenants_job_or_its_events(
    client: Client, topics: Settings
) -> None:
    _, acme = await new_key(topics, "acme")
    _, globex = await new_key(topics, "globex")
    job = await created(client, acme)

    assert (await client.get(f"/v1/jobs/{job}", headers=acme)).status == 200
    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/events"):
        as_other = await client.get(path, headers=globex)
        assert as_other.status == 404, path
        # The same answer as for an id that does not exist: nothing to probe.
        unknown = await client.get(path.replace(job, uuid.uuid4().hex), headers=globex)
        assert (await problem(as_other))["code"] == (await problem(unknown))["code"] == "not_found"
        assert (await client.get(path)).status == 404, path  # never readable anonymously


async def test_an_anonymous_job_is_readable_by_whoever_holds_its_id(
    client: Client, topics: Settings
) -> None:
    job = await created(client)
    _, acme = await new_key(topics, "acme")
    assert (await client.get(f"/v1/jobs/{job}")).status == 200
    assert (await client.get(f"/v1/jobs/{job}", headers=acme)).status == 200


async def test_unknown_malformed_and_revoked_keys_are_401_never_anonymous(
    client: Client, topics: Settings
) -> None:
    key_id, acme = await new_key(topics, "acme")
    assert (await client.get("/v1/jobs", headers=acme)).status == 200
    conn = await asyncpg.connect(topics.database_url.get_secret_value())
    try:
        assert await tenants.revoke_key(conn, key_id) == "acme"
    finally:
        await conn.close()
    bad = [
        acme,  # revoked: fails from the next request on
        {"Authorization": "Bearer pxs_" + "x" * 43},  # well-formed, unknown
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]
    for headers in bad:
        for resp in (await post(client, headers), await client.get("/v1/jobs", headers=headers)):
            assert resp.status == 401, headers
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await problem(resp))["code"] == "unauthorized"
    assert "revoked" in (await problem(await post(client, acme)))["detail"]


async def test_anonymous_off_is_401_and_presets_refuses_a_custom_spec(
    topics: Settings, make_client: ClientFactory
) -> None:
    closed = await make_client(topics.model_copy(update={"anonymous": "off"}))
    resp = await post(closed)
    assert resp.status == 401
    assert "API key is required" in (await problem(resp))["detail"]
    _, acme = await new_key(topics, "acme")
    assert (await post(closed, acme)).status == 202

    presets = await make_client(topics.model_copy(update={"anonymous": "presets"}))
    resp = await post(presets)
    assert resp.status == 422
    assert (await problem(resp))["code"] == "preset_required"
    assert (await post(presets, spec={"preset": "web"})).status == 202
    assert (await post(presets, acme)).status == 202  # a key may run any spec


async def test_idempotency_keys_are_scoped_by_tenant_and_a_reuse_names_no_job(
    client: Client, topics: Settings
) -> None:
    _, acme = await new_key(topics, "acme")
    _, globex = await new_key(topics, "globex")
    image = jpeg_bytes()
    key = {"Idempotency-Key": "order-1"}

    first = await client.post("/v1/jobs", data=job_form(image, SPEC), headers={**acme, **key})
    again = await client.post("/v1/jobs", data=job_form(image, SPEC), headers={**acme, **key})
    other = await client.post("/v1/jobs", data=job_form(image, SPEC), headers={**globex, **key})
    assert first.status == again.status == other.status == 202
    acme_job = (await first.json())["job_id"]
    assert (await again.json())["job_id"] == acme_job
    assert (await other.json())["job_id"] != acme_job  # the same key, another tenant's job

    reused = await client.post(
        "/v1/jobs", data=job_form(jpeg_bytes((10, 10)), SPEC), headers={**globex, **key}
    )
    assert reused.status == 422
    detail = (await problem(reused))["detail"]
    assert "different request" in detail
    assert acme_job not in detail
    assert (await other.json())["job_id"] not in detail


async def test_a_burst_of_concurrent_posts_with_one_key_makes_one_job(
    client: Client, topics: Settings
) -> None:
    _, acme = await new_key(topics, "acme")
    image = jpeg_bytes()
    headers = {**acme, "Idempotency-Key": uuid.uuid4().hex}
    # As many as there are upload slots: one more would wait for a slot, and on a loaded
    # machine be refused 503 (admission, tested on its own), which is not what this is about.
    burst = topics.max_uploads_in_flight
    post = functools.partial(client.post, "/v1/jobs", headers=headers)
    responses = await asyncio.gather(*(post(data=job_form(image, SPEC)) for _ in range(burst)))
    assert [r.status for r in responses] == [202] * burst
    assert len({(await r.json())["job_id"] for r in responses}) == 1
    conn = await asyncpg.connect(topics.database_url.get_secret_value())
    try:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1
        assert await conn.fetchval("SELECT count(*) FROM outbox") <= 1  # published or waiting
    finally:
        await conn.close()


async def test_jobs_are_listed_per_tenant_newest_first_with_a_cursor(
    client: Client, topics: Settings
) -> None:
    _, acme = await new_key(topics, "acme")
    _, globex = await new_key(topics, "globex")
    mine = [await created(client, acme) for _ in range(3)]
    await created(client, globex)
    await created(client)

    assert (await client.get("/v1/jobs")).status == 401  # anonymous: ids only
    page = await (await client.get("/v1/jobs?limit=2", headers=acme)).json()
    assert [j["job_id"] for j in page["jobs"]] == mine[::-1][:2]
    rest = await client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=acme)
    body = await rest.json()
    assert [j["job_id"] for j in body["jobs"]] == mine[:1]
    assert body["next_cursor"] is None
    queued = await (await client.get("/v1/jobs?status=queued", headers=acme)).json()
    assert {j["job_id"] for j in queued["jobs"]} == set(mine)
    for bad in ("limit=0", "limit=x", "status=done", "cursor=%%%"):
        resp = await client.get(f"/v1/jobs?{bad}", headers=acme)
        assert resp.status == 400, bad


async def test_rate_limits_apply_per_key(topics: Settings, make_client: ClientFactory) -> None:
    client = await make_client(topics.model_copy(update={"rate_limit_per_minute": 1}))
    _, acme = await new_key(topics, "acme")
    _, globex = await new_key(topics, "globex")
    assert (await post(client, acme)).status == 202
    limited = await post(client, acme)
    assert limited.status == 429
    assert "API key" in (await problem(limited))["detail"]
    assert (await post(client, globex)).status == 202  # another key has its own budget
    assert (await post(client)).status == 202  # and so has an address without a key
