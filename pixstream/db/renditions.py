"""The render-once index in PostgreSQL (migration 010): outputs already rendered, keyed by
tenant, source sha256, canonical step chain and engine version, and the claims of the tasks
rendering one now. One row per key: a claim (`rendering`) that turns `ready` when its task
has stored the object. An expired entry, or a claim whose lease lapsed (its worker died), may
be claimed again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from pixstream.contentkeys import ContentKey

_KEY: Final = "tenant = $1 AND source_sha256 = $2 AND engine = $3"

LOOKUP: Final = f"""
SELECT chain_key, state, job_id, object_key, output, claimed_by
FROM renditions
WHERE {_KEY} AND chain_key = ANY($4::text[])
  AND ((state = 'ready' AND expires_at > now())
       OR (state = 'rendering' AND claimed_until > now()))
"""
CLAIM: Final = """
INSERT INTO renditions (tenant, source_sha256, engine, chain_key, chain, state, claimed_by,
                        claimed_until)
VALUES ($1, $2, $3, $4, $5::jsonb, 'rendering', $6, now() + make_interval(secs => $7))
ON CONFLICT (tenant, source_sha256, chain_key, engine) DO UPDATE
    SET state = 'rendering', claimed_by = EXCLUDED.claimed_by,
        claimed_until = EXCLUDED.claimed_until, job_id = NULL, object_key = NULL,
        output = NULL, expires_at = NULL, created_at = now()
    WHERE (renditions.state = 'ready' AND renditions.expires_at <= now())
       OR (renditions.state = 'rendering'
           AND (renditions.claimed_until <= now() OR renditions.claimed_by = EXCLUDED.claimed_by))
RETURNING chain_key
"""
RENEW: Final = f"""
UPDATE renditions SET claimed_until = now() + make_interval(secs => $6)
WHERE {_KEY} AND chain_key = ANY($4::text[]) AND state = 'rendering' AND claimed_by = $5
"""
# Ours whether we still hold the claim or it lapsed to another task: both renderings are
# right, and the first one kept wins (a live ready entry is never replaced).
KEEP: Final = """
INSERT INTO renditions (tenant, source_sha256, engine, chain_key, chain, state, job_id,
                        object_key, output, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, 'ready', $6, $7, $8::jsonb, now() + make_interval(secs => $9))
ON CONFLICT (tenant, source_sha256, chain_key, engine) DO UPDATE
    SET state = 'ready', job_id = EXCLUDED.job_id, object_key = EXCLUDED.object_key,
        output = EXCLUDED.output, expires_at = EXCLUDED.expires_at, claimed_by = NULL,
        claimed_until = NULL, created_at = now()
    WHERE NOT (renditions.state = 'ready' AND renditions.expires_at > now())
"""
RELEASE: Final = f"""
DELETE FROM renditions
WHERE {_KEY} AND chain_key = ANY($4::text[]) AND state = 'rendering' AND claimed_by = $5
"""
FORGET: Final = f"""
DELETE FROM renditions WHERE {_KEY} AND chain_key = $4 AND state = 'ready' AND job_id = $5
"""


@dataclass(frozen=True)
class Entry:
    """A row of the index: ready (a job's output to copy) or claimed by a task."""

    chain_key: str
    ready: bool
    job_id: str | None
    object_key: str | None
    output: dict[str, Any] | None
    claimed_by: str | None


def _args(key: ContentKey) -> tuple[str, str, str]:
    return key.tenant, key.source_sha256, key.engine


async def lookup(conn: Any, keys: list[ContentKey]) -> dict[str, Entry]:
    """The live entries (ready and unexpired, or claimed under a live lease) of `keys`, which
    share one tenant, source and engine; by chain key."""
    if not keys:
        return {}
    rows = await conn.fetch(LOOKUP, *_args(keys[0]), [k.chain_key for k in keys])
    return {
        row["chain_key"]: Entry(
            chain_key=row["chain_key"],
            ready=row["state"] == "ready",
            job_id=row["job_id"],
            object_key=row["object_key"],
            output=json.loads(row["output"]) if row["output"] is not None else None,
            claimed_by=row["claimed_by"],
        )
        for row in rows
    }


async def claim(conn: Any, key: ContentKey, task_id: str, lease_seconds: float) -> bool:
    """Claim `key` for `task_id` (the task's CloudEvent id, so its redelivery holds the same
    claim); False while another task holds it or a live entry exists."""
    chain = json.dumps(list(key.chain))
    row = await conn.fetchval(CLAIM, *_args(key), key.chain_key, chain, task_id, lease_seconds)
    return row is not None


async def renew(conn: Any, keys: list[ContentKey], task_id: str, lease_seconds: float) -> None:
    """Extend `task_id`'s claims on `keys`: it is still rendering them."""
    if keys:
        await conn.execute(
            RENEW, *_args(keys[0]), [k.chain_key for k in keys], task_id, lease_seconds
        )


async def keep(
    conn: Any,
    key: ContentKey,
    *,
    job_id: str,
    object_key: str | None,
    output: dict[str, Any],
    retain_seconds: float,
) -> None:
    """Record `job_id`'s output for `key`, retained `retain_seconds` from now."""
    await conn.execute(
        KEEP,
        *_args(key),
        key.chain_key,
        json.dumps(list(key.chain)),
        job_id,
        object_key,
        json.dumps(output),
        float(retain_seconds),
    )


async def release(conn: Any, keys: list[ContentKey], task_id: str) -> None:
    """Give up `task_id`'s claims on `keys` (it failed): a waiting task may claim them now."""
    if keys:
        await conn.execute(RELEASE, *_args(keys[0]), [k.chain_key for k in keys], task_id)


async def forget(conn: Any, key: ContentKey, job_id: str) -> None:
    """`job_id`'s entry for `key` points at an object that is gone (expired or deleted)."""
    await conn.execute(FORGET, *_args(key), key.chain_key, job_id)
