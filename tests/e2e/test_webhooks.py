"""Webhooks end to end: a real worker process delivers terminal events to receivers bound to
127.0.0.1, retries, waits behind its circuit breaker, survives SIGKILL and obeys the guard."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from pixstream import signing
from pixstream.db import tenants
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    CloudEvent,
    JobCompleted,
    JobFailed,
    OutputInfo,
    parse_data,
)
from pixstream.settings import Settings
from tests.e2e.conftest import Pipeline, running_pipeline
from tests.e2e.receiver import WEBHOOK_SETTINGS, Hit, Receiver
from tests.harness import TERMINAL, jpeg_bytes, submit, wait_until

try:  # the official verifier: the receivers' side of the contract
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as exc:  # a dev dependency; its absence must fail the run, not skip
    raise ImportError("install the dev extras: pip install -e '.[dev]'") from exc

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

WITHIN = 60.0  # generous: a wait, not a speed requirement


@pytest.fixture(scope="module")
async def hooks(
    services: Settings, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        services, template_database, tmp_path_factory.mktemp("hooks"), **WEBHOOK_SETTINGS
    ) as running:
        yield running


async def down_receiver() -> Receiver:
    """A receiver that has a port but is not listening (yet)."""
    r = await Receiver().start()
    await r.stop()
    return r


async def rows(settings: Settings, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The webhook_deliveries rows of these jobs, by job id."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        found = await conn.fetch(
            "SELECT job_id, event_id, state, attempts, last_status, last_error, "
            "extract(epoch FROM next_attempt_at)::float8 AS next_attempt_at "
            "FROM webhook_deliveries WHERE job_id = ANY($1::text[])",
            list(job_ids),
        )
    finally:
        await conn.close()
    return {r["job_id"]: dict(r) for r in found}


async def wait_rows(
    settings: Settings, job_ids: list[str], states: set[str], within: float = WITHIN
) -> dict[str, dict[str, Any]]:
    """Wait until every job's row is in one of `states`; fail naming those that are not."""
    latest: dict[str, dict[str, Any]] = {}

    async def settled() -> bool:
        nonlocal latest
        latest = await rows(settings, job_ids)
        return all(latest.get(j, {}).get("state") in states for j in job_ids)

    if not await wait_until(settled, within):
        pytest.fail(f"deliveries not {states} after {within:.0f}s: {latest}")
    return latest


def verified_event(settings: Settings, hit: Hit) -> CloudEvent:
    signing.verify(settings.webhook_secret.get_secret_value(), hit.headers, hit.body)
    event = CloudEvent.parse(hit.body)
    assert hit.webhook_id == event.id
    return event


async def test_a_completed_job_delivers_one_signed_event_with_working_urls(
    hooks: Pipeline, receiver: Receiver
) -> None:
    job = await submit(hooks.settings, webhook_url=receiver.url)
    await hooks.watcher.wait_terminal([job])
    (row,) = (await wait_rows(hooks.settings, [job], {"delivered"})).values()

    (hit,) = receiver.for_job(job)
    assert hit.headers["Content-Type"] == "application/json"
    event = verified_event(hooks.settings, hit)
    # One terminal event id; a redelivery under load may repeat that same event.
    (terminal,) = {e.id: e for e in hooks.watcher.of_type(job, *TERMINAL)}.values()
    assert (event.type, event.id) == (JOB_COMPLETED, terminal.id)
    data = parse_data(event)
    assert isinstance(data, JobCompleted)
    assert data.job_id == job
    assert set(data.outputs) == {"webp", "thumb"}
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)

    async with aiohttp.ClientSession() as http:
        for output in data.outputs.values():
            assert isinstance(output, OutputInfo)
            assert output.url is not None
            # The local MinIO: keeps this test's traffic on loopback.
            assert URL(output.url).host == "127.0.0.1"
            async with http.get(output.url) as response:
                assert response.status == 200
                assert len(await response.read()) == output.bytes


async def test_retries_keep_the_webhook_id_until_delivered(hooks: Pipeline) -> None:
    receiver = await Receiver([500, 500, 200]).start()
    try:
        job = await submit(hooks.settings, webhook_url=receiver.url)
        (row,) = (await wait_rows(hooks.settings, [job], {"delivered"})).values()
    finally:
        await receiver.stop()

    hits = receiver.for_job(job)
    assert [h.status for h in hits] == [500, 500, 200]
    assert {h.webhook_id for h in hits} == {row["event_id"]}
    for hit in hits:
        verified_event(hooks.settings, hit)  # a fresh timestamp and signature each time
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)


async def test_a_failed_job_notifies_its_errors(hooks: Pipeline, receiver: Receiver) -> None:
    job = await submit(hooks.settings, jpeg_bytes()[:3000], webhook_url=receiver.url)
    await hooks.watcher.wait_terminal([job])
    await wait_rows(hooks.settings, [job], {"delivered"})

    (hit,) = receiver.for_job(job)
    event = verified_event(hooks.settings, hit)
    (terminal,) = hooks.watcher.of_type(job, *TERMINAL)
    assert event.type == JOB_FAILED
    data = parse_data(event)
    assert isinstance(data, JobFailed)
    assert data.errors
    assert data.errors == JobFailed.model_validate(terminal.data).errors


async def test_the_breaker_holds_requests_back_until_it_half_opens(hooks: Pipeline) -> None:
    receiver = await down_receiver()
    jobs = [await submit(hooks.settings, webhook_url=receiver.url) for _ in range(4)]
    try:
        # The breaker has opened once a row waits for it (nothing was sent for that row).
        waiting: dict[str, dict[str, Any]] = {}

        async def breaker_open() -> bool:
            nonlocal waiting
            waiting = {
                j: r
                for j, r in (await rows(hooks.settings, jobs)).items()
                if "circuit breaker" in (r["last_error"] or "")
            }
            return bool(waiting)

        assert await wait_until(breaker_open, WITHIN, interval=0.05), "the breaker never opened"
        half_open_at = min(r["next_attempt_at"] for r in waiting.values())
        await receiver.start()  # the same port, while the breaker is still open
        assert time.time() < half_open_at, "the receiver came back too late to test the breaker"

        delivered = await wait_rows(hooks.settings, jobs, {"delivered"})
    finally:
        await receiver.stop()

    assert receiver.hits, "no request reached the receiver"
    # Clock reading and SQL now() differ by a few milliseconds.
    assert min(h.at for h in receiver.hits) >= half_open_at - 0.1
    assert {h.webhook_id for h in receiver.delivered()} == {
        r["event_id"] for r in delivered.values()
    }
    # Waiting behind the open breaker spent no attempts: far fewer than the outage lasted.
    assert all(r["attempts"] <= 5 for r in delivered.values())


async def test_deliveries_waiting_when_the_worker_is_killed_arrive_once(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    receiver = await down_receiver()
    async with running_pipeline(
        services, template_database, tmp_path, **WEBHOOK_SETTINGS
    ) as pipeline:
        jobs = [await submit(pipeline.settings, webhook_url=receiver.url) for _ in range(3)]
        await pipeline.watcher.wait_terminal(jobs)

        async def all_waiting() -> bool:
            found = await rows(pipeline.settings, jobs)
            return len(found) == len(jobs) and all(
                r["state"] == "pending" and r["last_error"] for r in found.values()
            )

        assert await wait_until(all_waiting, WITHIN), await rows(pipeline.settings, jobs)
        pipeline.worker.kill()
        await receiver.start()
        try:
            pipeline.restart_worker()
            delivered = await wait_rows(pipeline.settings, jobs, {"delivered"})
        finally:
            await receiver.stop()
            # Faust ignores SIGTERM for ~30s while its group still waits on the killed member
            # (seen without the notifier too); this test has nothing to check in that shutdown.
            pipeline.worker.kill()

    ok = Counter(h.webhook_id for h in receiver.delivered())
    assert set(ok) == {r["event_id"] for r in delivered.values()}
    assert len(ok) == len(jobs)
    assert max(ok.values()) == 1, f"delivered twice: {ok}"


async def test_the_guard_keeps_webhooks_off_loopback(
    services: Settings, template_database: str, tmp_path: Path, receiver: Receiver
) -> None:
    settings = {**WEBHOOK_SETTINGS, "webhook_allow_private": False}
    urls = {
        "literal": f"http://127.0.0.1:{receiver.port}/hook",
        "mapped": f"http://[::ffff:127.0.0.1]:{receiver.port}/hook",
        "name": f"http://localhost:{receiver.port}/hook",  # refused only once resolved
    }
    async with running_pipeline(services, template_database, tmp_path, **settings) as pipeline:
        jobs = {
            name: await submit(pipeline.settings, webhook_url=url) for name, url in urls.items()
        }
        await pipeline.watcher.wait_terminal(list(jobs.values()))
        found = await wait_rows(pipeline.settings, list(jobs.values()), {"refused"})
        terminal = {name: pipeline.watcher.of_type(job, *TERMINAL)[0] for name, job in jobs.items()}

    # Literal addresses are refused when the job is planned; the job fails and says why.
    for name in ("literal", "mapped"):
        assert terminal[name].type == JOB_FAILED
        errors = JobFailed.model_validate(terminal[name].data).errors
        assert [e.code for e in errors] == ["destination_refused"]
    # A name is judged on the addresses it resolves to, so only the delivery can refuse it.
    assert terminal["name"].type == JOB_COMPLETED
    for job in jobs.values():
        assert found[job]["state"] == "refused"
        assert found[job]["last_error"]
    assert receiver.hits == []


async def _secrets(settings: Settings, tenant: str) -> tuple[str, str]:
    """(the tenant's first secret, the one a rotation replaced it with)."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        old = await tenants.webhook_secret(conn, tenant)
        new = await tenants.webhook_secret(conn, tenant, rotate=True)
    finally:
        await conn.close()
    return old, new


def _verifies(secret: str, hit: Hit) -> bool:
    try:
        Webhook(secret).verify(hit.body, hit.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_a_tenant_signs_with_its_own_secret_and_both_during_a_rotation(
    hooks: Pipeline, receiver: Receiver
) -> None:
    old, new = await _secrets(hooks.settings, "acme")
    job = await submit(hooks.settings, webhook_url=receiver.url, tenant="acme")
    await wait_rows(hooks.settings, [job], {"delivered"})
    (hit,) = receiver.for_job(job)
    assert len(hit.headers["webhook-signature"].split()) == 2
    assert _verifies(new, hit)
    assert _verifies(old, hit)  # receivers not yet updated still verify
    assert not _verifies(hooks.settings.webhook_secret.get_secret_value(), hit)

    # Once the rotation window is over, only the new secret signs.
    conn = await asyncpg.connect(hooks.settings.database_url.get_secret_value())
    try:
        await conn.execute(
            "UPDATE webhook_secrets SET retired_at = now() - interval '2 days' "
            "WHERE tenant = 'acme' AND retired_at IS NOT NULL"
        )
    finally:
        await conn.close()
    later = await submit(hooks.settings, webhook_url=receiver.url, tenant="acme")
    await wait_rows(hooks.settings, [later], {"delivered"})
    (hit,) = receiver.for_job(later)
    assert _verifies(new, hit)
    assert not _verifies(old, hit)
