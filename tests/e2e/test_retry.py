"""POST /v1/jobs/{id}/retry through the real pipeline: the HTTP API, a `pixstream worker`,
Kafka, S3 and PostgreSQL. A retry re-runs only the failed branch, leaves the objects of the
outputs that succeeded untouched (same bytes, same ETag, never written again), and each run
ends with one terminal event and one webhook of its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer

from pixstream.client import Client as PixStreamClient
from pixstream.db import tenants
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_REQUESTED,
    JOB_RETRIED,
    STEP_COMPLETED,
    STEP_FAILED,
)
from pixstream.settings import Settings
from pixstream.spec import StepSpec
from pixstream.storage import s3_client
from tests.conftest import ClientFactory
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.e2e.receiver import WEBHOOK_SETTINGS, Hit, Receiver
from tests.harness import TERMINAL, jpeg_bytes, submit, wait_until

try:  # the official verifier: the receivers' side of the contract
    from standardwebhooks.webhooks import Webhook
except ImportError as exc:  # a dev dependency; its absence must fail the run, not skip
    raise ImportError("install the dev extras: pip install -e '.[dev]'") from exc

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

WITHIN = 90.0  # generous: a wait, not a speed requirement
#: The worker's pixel budget at first: `big` (3000x2400) is over it, the rest is not. The
#: ingress keeps the default budget, so it accepts the job and the worker fails that branch.
SMALL_BUDGET = "4000000"
SOURCE = (1000, 800)
SPEC: dict[str, Any] = {
    "steps": [
        {"id": "thumb", "op": "thumbnail", "params": {"size": 64}},
        {"id": "info", "op": "analyze", "params": {}},
        {"id": "big", "op": "resize", "params": {"width": 3000, "upscale": True}},
        {"id": "bigwebp", "op": "convert", "params": {"format": "webp"}, "input": "big"},
    ]
}
#: A branch that fails whatever the budget: the crop leaves the 1000x800 source.
BAD_CROP = [
    StepSpec(id="thumb", op="thumbnail", params={"size": 32}),
    StepSpec(id="crop", op="crop", params={"left": 0, "top": 0, "width": 5000, "height": 10}),
]

Client = TestClient[Any, Any]


@pytest.fixture(scope="module")
async def pipeline(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        services,
        template_database,
        tmp_path_factory.mktemp("retry"),
        extra_env={"PIXSTREAM_MAX_PIXELS": SMALL_BUDGET},
        **WEBHOOK_SETTINGS,
    ) as running:
        yield running


async def post_job(api: Client, spec: dict[str, Any]) -> str:
    form = aiohttp.FormData()
    form.add_field("file", jpeg_bytes(SOURCE), filename="a.jpg", content_type="image/jpeg")
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    resp = await api.post("/v1/jobs", data=form)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["job_id"])


async def finished(api: Client, job_id: str, headers: dict[str, str] | None = None) -> Any:
    job: Any = None
    for _ in range(int(WITHIN / 0.2)):
        job = await (await api.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def objects(settings: Settings, job_id: str) -> dict[str, dict[str, Any]]:
    """The job's output objects: key -> bytes, ETag and LastModified (a rewrite, even of the
    same bytes, moves LastModified)."""
    found: dict[str, dict[str, Any]] = {}
    async with s3_client(settings) as client:
        listed = await client.list_objects_v2(
            Bucket=settings.s3_bucket, Prefix=f"processed/{job_id}/"
        )
        for entry in listed.get("Contents", []):
            obj = await client.get_object(Bucket=settings.s3_bucket, Key=entry["Key"])
            async with obj["Body"] as body:
                data = await body.read()
            found[entry["Key"]] = {
                "bytes": data,
                "etag": obj["ETag"],
                "modified": obj["LastModified"],
            }
    return found


async def terminal_ids(pipeline: Pipeline, job_id: str, count: int) -> list[str]:
    """The job's terminal event ids once it has `count` of them (and a moment for an extra)."""

    async def enough() -> bool:
        return len(pipeline.watcher.of_type(job_id, *TERMINAL)) >= count

    assert await wait_until(enough, WITHIN), pipeline.watcher.events.get(job_id)
    await asyncio.sleep(1.0)  # a second terminal event of the same run would show by now
    return [e.id for e in pipeline.watcher.of_type(job_id, *TERMINAL)]


async def hooks_of(receiver: Receiver, job_id: str, count: int) -> list[Hit]:
    async def enough() -> bool:
        return len(receiver.for_job(job_id)) >= count

    assert await wait_until(enough, WITHIN), receiver.hits
    await asyncio.sleep(1.0)  # room for a duplicate delivery to show
    return receiver.for_job(job_id)


def verified(settings: Settings, hit: Hit) -> dict[str, Any]:
    body: dict[str, Any] = Webhook(settings.webhook_secret.get_secret_value()).verify(
        hit.body, hit.headers
    )
    assert hit.webhook_id == body["id"]
    return body


async def retry(api: Client, job_id: str, headers: dict[str, str] | None = None) -> Any:
    return await api.post(f"/v1/jobs/{job_id}/retry", headers=headers)


async def problem(resp: Any, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


# -- the refusals -----------------------------------------------------------------------------
async def test_another_tenants_job_and_an_unknown_one_are_not_found(
    pipeline: Pipeline, api: Client
) -> None:
    conn = await asyncpg.connect(pipeline.settings.database_url.get_secret_value())
    try:
        _, acme = await tenants.create_key(conn, "acme", "test")
        _, umbrella = await tenants.create_key(conn, "umbrella", "test")
    finally:
        await conn.close()
    job_id = await submit(pipeline.settings, jpeg_bytes(SOURCE), BAD_CROP, tenant="acme")
    owner = {"Authorization": f"Bearer {acme}"}
    assert (await finished(api, job_id, owner))["status"] == "failed"

    await problem(
        await retry(api, job_id, {"Authorization": f"Bearer {umbrella}"}), 404, "not_found"
    )
    await problem(await retry(api, job_id), 404, "not_found")  # anonymous
    await problem(await retry(api, "no-such-job"), 404, "not_found")
    assert (await finished(api, job_id, owner))["status"] == "failed"  # nothing moved it
    resp = await retry(api, job_id, owner)
    assert resp.status == 202, await resp.text()


async def test_a_job_whose_source_is_gone_or_past_retention_is_gone(
    pipeline: Pipeline, api: Client, make_client: ClientFactory
) -> None:
    expired = await submit(pipeline.settings, jpeg_bytes(SOURCE), BAD_CROP)
    deleted = await submit(pipeline.settings, jpeg_bytes(SOURCE), BAD_CROP)
    assert (await finished(api, expired))["status"] == "failed"
    assert (await finished(api, deleted))["status"] == "failed"

    async with s3_client(pipeline.settings) as s3:
        await s3.delete_object(Bucket=pipeline.settings.s3_bucket, Key=f"raw/{deleted}/source.jpg")
    await problem(await retry(api, deleted), 410, "source_expired")

    short = await make_client(pipeline.settings.model_copy(update={"retention_seconds": 1}))
    await asyncio.sleep(1.1)
    await problem(await retry(short, expired), 410, "source_expired")
    assert (await (await api.get(f"/v1/jobs/{deleted}")).json())["status"] == "failed"
    resp = await retry(api, expired)  # under the real retention, the same job may run again
    assert resp.status == 202, await resp.text()


# -- the retry itself -------------------------------------------------------------------------
async def test_a_retry_reruns_only_the_failed_branch_and_each_run_ends_once(
    pipeline: Pipeline, api: Client, receiver: Receiver
) -> None:
    settings = pipeline.settings
    job_id = await post_job(api, {**SPEC, "webhook_url": receiver.url})
    first = await finished(api, job_id)
    assert (first["status"], first["run"]) == ("failed", 0), first
    assert {e["step"]: e["code"] for e in first["errors"]} == {
        "big": "too_many_pixels",
        "bigwebp": "skipped_dependency",
    }
    assert set(first["outputs"]) == {"thumb", "info"}
    assert await terminal_ids(pipeline, job_id, 1) == [f"{job_id}.job.failed"]
    (hook0,) = await hooks_of(receiver, job_id, 1)
    kept = await objects(settings, job_id)
    assert list(kept) == [f"processed/{job_id}/thumb.jpg"]

    # Run 1, on the same small budget: the failed branch fails again, and only it ran.
    resp = await retry(api, job_id)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (body["status"], body["run"], body["links"]["self"]) == (
        "processing",
        1,
        f"/v1/jobs/{job_id}",
    )
    now = await (await api.get(f"/v1/jobs/{job_id}")).json()
    assert (now["status"], now["run"]) == ("processing", 1)
    assert set(now["outputs"]) == {"thumb", "info"}
    assert now["errors"] == []
    await problem(await retry(api, job_id), 409, "job_not_retryable")  # processing: not failed
    again = await finished(api, job_id)
    assert (again["status"], again["run"]) == ("failed", 1)
    assert set(again["outputs"]) == {"thumb", "info"}
    assert again["outputs"]["info"] == first["outputs"]["info"]
    assert await terminal_ids(pipeline, job_id, 2) == [
        f"{job_id}.job.failed",
        f"{job_id}.r1.job.failed",
    ]
    run1 = [
        e
        for e in pipeline.watcher.of_type(job_id, STEP_COMPLETED, STEP_FAILED)
        if e.data["run"] == 1
    ]
    assert sorted(e.data["step"] for e in run1) == ["big", "bigwebp"]
    assert [e.id for e in pipeline.watcher.of_type(job_id, JOB_RETRIED)] == [
        f"{job_id}.r1.job.retried"
    ]
    hook0_again, hook1 = await hooks_of(receiver, job_id, 2)
    assert hook0_again == hook0
    assert verified(settings, hook1)["id"] == f"{job_id}.r1.job.failed"
    assert verified(settings, hook1)["data"]["outputs"]["thumb"]["url"]
    assert await objects(settings, job_id) == kept  # same bytes, ETag and LastModified

    # Run 2, on a budget that fits: the branch completes; the kept object is still untouched.
    pipeline.worker.stop()
    pipeline.worker.env.pop("PIXSTREAM_MAX_PIXELS")
    pipeline.restart_worker()
    probe = await submit(settings)  # the restarted worker is in its group once this ends
    await pipeline.watcher.wait_terminal([probe], WITHIN)
    resp = await retry(api, job_id)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["run"] == 2
    done = await finished(api, job_id)
    assert (done["status"], done["run"]) == ("completed", 2), done
    assert set(done["outputs"]) == {"thumb", "info", "bigwebp"}
    assert (done["outputs"]["bigwebp"]["width"], done["outputs"]["bigwebp"]["height"]) == (
        3000,
        2400,
    )
    ids = await terminal_ids(pipeline, job_id, 3)
    assert ids[2] == f"{job_id}.r2.job.completed"
    (completed,) = pipeline.watcher.of_type(job_id, JOB_COMPLETED)
    assert set(completed.data["outputs"]) == {"thumb", "info", "bigwebp"}
    assert len(pipeline.watcher.of_type(job_id, JOB_FAILED)) == 2
    hooks = await hooks_of(receiver, job_id, 3)
    assert len(hooks) == 3
    last = verified(settings, hooks[2])
    assert (last["id"], last["type"]) == (f"{job_id}.r2.job.completed", JOB_COMPLETED)
    after = await objects(settings, job_id)
    assert after[f"processed/{job_id}/thumb.jpg"] == kept[f"processed/{job_id}/thumb.jpg"]
    assert set(after) == {f"processed/{job_id}/thumb.jpg", f"processed/{job_id}/bigwebp.webp"}

    # What a retry rendered is kept for render once like any render: an identical job
    # (same tenant, source bytes and steps) copies run 2's bigwebp instead of rendering it.
    twin_id = await post_job(api, SPEC)
    twin = await finished(api, twin_id)
    assert twin["status"] == "completed", twin
    assert twin["outputs"]["bigwebp"]["reused_from"] == job_id
    assert (twin["outputs"]["bigwebp"]["width"], twin["outputs"]["bigwebp"]["height"]) == (
        3000,
        2400,
    )

    # A client following the job replays every run and ends at the last one's end, not at
    # the first job.failed (a retry followed it).
    async with PixStreamClient(str(api.make_url(""))) as follower:
        followed = [e.id async for e in follower.events(job_id)]
    assert [i for i in followed if i.endswith((".job.failed", ".job.completed"))] == ids[:3]

    # Completed now: nothing to retry.
    await problem(await retry(api, job_id), 409, "job_not_retryable")
    await asyncio.sleep(1.0)
    assert len(receiver.for_job(job_id)) == 3


async def test_a_batch_jobs_retry_runs_in_the_batch_lane(pipeline: Pipeline, api: Client) -> None:
    spec = {"steps": [s.model_dump(mode="json") for s in BAD_CROP], "priority": "batch"}
    job_id = await post_job(api, spec)
    assert (await finished(api, job_id))["status"] == "failed"
    resp = await retry(api, job_id)
    assert resp.status == 202, await resp.text()
    # The first run's task began with the thumbnail; the retry re-runs the failed crop
    # alone, and its task waits on the crop op's batch topic.
    # (Sets: a rebalance reads again what an agent held, so a task may be sent twice.)
    first = await _tasks_on(pipeline.settings, "op.thumbnail.batch", job_id)
    assert {t["data"].get("run", 0) for t in first} == {0}
    again = await _tasks_on(pipeline.settings, "op.crop.batch", job_id)
    assert {t["data"].get("run", 0) for t in again} == {1}
    # The ingress sent the job's request and its retry to the batch lane's jobs topic.
    requests = await _tasks_on(pipeline.settings, "jobs.batch", job_id)
    assert list(dict.fromkeys(r["type"] for r in requests)) == [JOB_REQUESTED, JOB_RETRIED]


async def _tasks_on(settings: Settings, topic: str, job_id: str) -> list[Any]:
    """The job's events on `topic` (tasks, or requests), once there is one."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Any] = []
    try:
        for _ in range(int(WITHIN / 0.5)):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found += [
                    e for r in records if (e := json.loads(r.value))["data"]["job_id"] == job_id
                ]
            if found:
                break
    finally:
        await consumer.stop()
    return sorted(found, key=lambda e: e["data"].get("run", 0))
