"""Round trips through the real Kafka, PostgreSQL and S3 of the local stack."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid

import aiohttp
import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from pixstream import kafka
from pixstream.db.migrate import apply_migrations, migration_files
from pixstream.errors import SourceUnavailable, TransientError
from pixstream.settings import Settings
from pixstream.storage import lifecycle_rules, open_storage, s3_client
from pixstream.topics import TopicConfig, apply_topics, load_topics
from tests.harness import delete_topics

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]


async def test_kafka_round_trip_with_idempotent_producer(topics: Settings) -> None:
    topic = topics.topic("jobs")
    values = [f"message-{i}".encode() for i in range(5)]
    async with kafka.open_producer(topics) as producer:
        for value in values:
            await kafka.send(producer, topic, value, key="job-1", headers=[("h", b"1")])
    got: list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]] = []
    async with kafka.open_consumer(topics, topic, group_id=f"{topics.app_id}-rt") as consumer:
        while len(got) < len(values):
            batch = await consumer.getmany(timeout_ms=5_000)
            assert batch, "no message arrived within 5 s"
            for records in batch.values():
                got += [(r.key, r.value, r.headers) for r in records]
        await consumer.commit()
    assert [v for _, v, _ in got] == values  # one key, one partition: order is kept
    assert {k for k, _, _ in got} == {b"job-1"}
    assert got[0][2] == (("h", b"1"),)


async def test_postgres_round_trip_and_migrations_are_idempotent(database_url: str) -> None:
    assert await apply_migrations(database_url) == []  # the template already has them all
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (job_id, status, steps_total, spec) VALUES ($1, 'queued', 1, $2)",
            "job-pg",
            '{"steps": []}',
        )
        row = await conn.fetchrow("SELECT status, steps_total FROM jobs WHERE job_id = 'job-pg'")
        versions = await conn.fetch("SELECT version FROM schema_migrations")
    finally:
        await conn.close()
    assert dict(row) == {"status": "queued", "steps_total": 1}
    assert sorted(r["version"] for r in versions) == [v for v, _ in migration_files()]


async def test_s3_round_trip_and_presigned_get_over_http(services: Settings) -> None:
    key = f"raw/test-{uuid.uuid4().hex}/source.png"
    body = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    async with open_storage(services) as storage:
        await storage.put(key, body, "image/png")
        assert await storage.get(key) == body
        assert await storage.exists(key)
        assert not await storage.exists(key + ".missing")
        # The endpoint keeps the checksum it checked: render once reads it instead of the bytes.
        assert await storage.sha256(key) == hashlib.sha256(body).hexdigest()
        url = storage.presigned_url(key)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == body
    tampered = url.replace("X-Amz-Expires=", "X-Amz-Expires=9")
    async with aiohttp.ClientSession() as http, http.get(tampered) as resp:
        assert resp.status == 403  # MinIO checks the signature


async def test_the_data_paths_own_signed_requests_read_back_through_botocore(
    services: Settings,
) -> None:
    """`Storage` signs its requests itself; botocore, independent of it, sees what it wrote."""
    key, copied = (f"processed/test-{uuid.uuid4().hex}/{n}.webp" for n in ("out", "copy"))
    body = uuid.uuid4().bytes * 100
    async with open_storage(services) as storage:
        await storage.put(key, body, "image/webp")
        await storage.copy(key, copied)
        with pytest.raises(SourceUnavailable, match="does not exist"):
            await storage.copy(key + ".missing", copied + ".never")
        with pytest.raises(SourceUnavailable, match="larger than 100 bytes"):
            await storage.get(key, max_bytes=100)
        await storage.ping()
    async with s3_client(services) as client:
        for stored in (key, copied):
            obj = await client.get_object(
                Bucket=services.s3_bucket, Key=stored, ChecksumMode="ENABLED"
            )
            assert obj["ContentType"] == "image/webp"
            assert await obj["Body"].read() == body
        assert obj["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()


async def test_storage_failures_are_transient_with_the_endpoints_reason(
    services: Settings, unused_tcp_port: int
) -> None:
    wrong = services.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret")})
    async with open_storage(wrong) as storage:
        with pytest.raises(TransientError, match="HTTP 403 SignatureDoesNotMatch"):
            await storage.get("raw/any/source.jpg")
    nobody = services.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{unused_tcp_port}"})
    async with open_storage(nobody) as storage:
        with pytest.raises(TransientError, match="Cannot connect"):
            await storage.sha256("raw/any/source.jpg")


async def test_presigned_url_is_stable_within_a_window_and_expires(services: Settings) -> None:
    key = f"processed/test-{uuid.uuid4().hex}/out.txt"
    async with open_storage(services) as storage:
        await storage.put(key, b"hello", "text/plain")
        window = services.presign_window_seconds
        start = 1_900_000_000 // window * window
        assert storage.presigned_url(key, now=start + 1) == storage.presigned_url(
            key, now=start + window - 1
        )
        assert storage.presigned_url(key, now=start + window) != storage.presigned_url(
            key, now=start
        )
        # Signed two windows and an hour ago: expired, and the server says so.
        import time

        stale = storage.presigned_url(key, now=time.time() - 2 * window - 3600)
    async with aiohttp.ClientSession() as http, http.get(stale) as resp:
        assert resp.status == 403
        assert b"expired" in (await resp.read()).lower()


async def test_bucket_lifecycle_rules_are_applied(services: Settings) -> None:
    async with s3_client(services) as client:
        config = await client.get_bucket_lifecycle_configuration(Bucket=services.s3_bucket)
    rules = {r["ID"]: r for r in config["Rules"]}
    assert set(rules) == {"expire-raw", "expire-processed"}
    for rule in rules.values():
        assert rule["Status"] == "Enabled"
        assert rule["Expiration"]["Days"] == 1
    assert lifecycle_rules(3 * 86_400 + 1)[0]["Expiration"]["Days"] == 4


async def test_topics_apply_is_idempotent_and_raises_partitions(settings: Settings) -> None:
    try:
        await _apply_twice_then_grow(settings)
    finally:
        await delete_topics(settings)


async def _apply_twice_then_grow(settings: Settings) -> None:
    declared = load_topics(settings)
    first = await apply_topics(settings.kafka_bootstrap, declared)
    assert {c.topic for c in first if c.action == "create"} == {t.name for t in declared}
    assert await apply_topics(settings.kafka_bootstrap, declared) == []

    jobs = next(t for t in declared if t.name == settings.topic("jobs"))
    grown = [
        TopicConfig(jobs.name, jobs.partitions + 2, 1, {**jobs.config, "retention.ms": "3600000"})
    ]
    dry = await apply_topics(settings.kafka_bootstrap, grown, dry_run=True)
    assert {c.action for c in dry} == {"partitions", "config"}
    assert (
        await apply_topics(settings.kafka_bootstrap, grown, dry_run=True) == dry
    )  # dry: no change
    assert await apply_topics(settings.kafka_bootstrap, grown) == dry
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for _ in range(50):  # metadata reaches the broker's cache shortly after the change
            (meta,) = await admin.describe_topics([jobs.name])
            if len(meta["partitions"]) == jobs.partitions + 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert len(meta["partitions"]) == jobs.partitions + 2
    assert await apply_topics(settings.kafka_bootstrap, grown) == []
