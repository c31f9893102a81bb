"""PostgreSQL stays bounded: what is older than the horizon is deleted, nothing younger."""

from __future__ import annotations

import asyncpg
import pytest

from pixstream.worker.pruning import prune_database

pytestmark = pytest.mark.postgres

OLD = "now() - interval '10 days'"


async def test_prune_deletes_old_ended_rows_and_keeps_the_rest(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for job, status, finished in (
            ("old-done", "completed", OLD),
            ("new-done", "completed", "now()"),
            ("old-running", "processing", "NULL"),
        ):
            await conn.execute(
                "INSERT INTO jobs (job_id, status, steps_total, spec, created_at, updated_at,"
                f" finished_at) VALUES ($1, $2, 1, '{{}}', {OLD}, {OLD}, {finished})",
                job,
                status,
            )
        await conn.execute(
            "INSERT INTO idempotency_keys (key, request_hash, job_id, created_at)"
            f" VALUES ('k-old', 'h', 'old-done', {OLD}), ('k-new', 'h', 'new-done', now())"
        )
        await conn.execute(
            "INSERT INTO webhook_deliveries (event_id, job_id, url, body, state, updated_at)"
            f" VALUES ('e-old', 'old-done', 'https://x', '', 'delivered', {OLD}),"
            f" ('e-pending', 'old-done', 'https://x', '', 'pending', {OLD})"
        )
        for job in ("old-done", "new-done", "old-running"):
            await conn.execute(
                "INSERT INTO job_events (event_id, job_id, type, event)"
                " VALUES ($1, $2, 'pixstream.job.requested', '{}')",
                f"{job}.job.requested",
                job,
            )
        await conn.execute(
            'INSERT INTO dead_letter_replays (dlq_topic, partition, "offset", target_topic,'
            f" replayed_at) VALUES ('dlq', 0, 1, 'jobs', {OLD})"
        )

        for chain, expires in (("c-old", OLD), ("c-live", "now() + interval '1 day'")):
            await conn.execute(
                "INSERT INTO renditions (tenant, source_sha256, chain_key, engine, chain, state,"
                " job_id, object_key, output, expires_at) VALUES ('acme', 's', $1, 'e', '[]',"
                f" 'ready', 'old-done', 'processed/old-done/a.png', '{{}}', {expires})",
                chain,
            )

        counts = await prune_database(conn, 7 * 86_400, 30 * 86_400)

        assert counts == {
            "job_events": 1,
            "jobs": 1,
            "idempotency_keys": 1,
            "webhook_deliveries": 1,
            "render_starts": 0,
            "renditions": 1,
            "dead_letter_replays": 0,  # its dead letter may still be in the DLQ
        }
        jobs = {r["job_id"] for r in await conn.fetch("SELECT job_id FROM jobs")}
        assert jobs == {"new-done", "old-running"}
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
        logged = {r["job_id"] for r in await conn.fetch("SELECT job_id FROM job_events")}
        assert logged == jobs  # an ended job's event log goes with it
    finally:
        await conn.close()
