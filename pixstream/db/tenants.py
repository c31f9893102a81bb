"""Tenants, their API keys and their webhook secrets in PostgreSQL."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pixstream import apikeys
from pixstream.signing import SECRET_PREFIX

#: `last_used_at` is written at most this often per key, not on every request.
LAST_USED_RESOLUTION_SECONDS: Final = 60.0

ENSURE_TENANT: Final = "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"

INSERT_KEY: Final = """
INSERT INTO api_keys (key_id, tenant, label, key_hash) VALUES ($1, $2, $3, $4)
RETURNING created_at
"""

SELECT_KEYS: Final = """
SELECT key_id, tenant, label, created_at, last_used_at, revoked_at FROM api_keys
WHERE $1::text IS NULL OR tenant = $1
ORDER BY tenant, created_at, key_id
"""

REVOKE_KEY: Final = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
RETURNING tenant
"""

# The lookup of every request: one index probe, and a write only once a minute per key.
SELECT_CALLER: Final = """
WITH hit AS (
    SELECT key_id, tenant, revoked_at, last_used_at FROM api_keys WHERE key_hash = $1
), touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE key_id = (SELECT key_id FROM hit WHERE revoked_at IS NULL)
      AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))
)
SELECT key_id, tenant, revoked_at FROM hit
"""

SELECT_SECRETS: Final = """
SELECT secret FROM webhook_secrets
WHERE tenant = $1 AND (retired_at IS NULL OR retired_at > now() - make_interval(secs => $2))
ORDER BY id DESC
"""

RETIRE_SECRETS: Final = """
UPDATE webhook_secrets SET retired_at = now() WHERE tenant = $1 AND retired_at IS NULL
"""

LOCK_TENANT_SECRETS: Final = "SELECT pg_advisory_xact_lock(hashtext('webhook-secret:' || $1))"

INSERT_SECRET: Final = "INSERT INTO webhook_secrets (tenant, secret) VALUES ($1, $2)"

CURRENT_SECRET: Final = """
SELECT secret FROM webhook_secrets WHERE tenant = $1 AND retired_at IS NULL
ORDER BY id DESC LIMIT 1
"""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class KeyOwner:
    """Who a presented key belongs to; `revoked` keys are refused."""

    key_id: str
    tenant: str
    revoked: bool


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


async def create_key(conn: Any, tenant: str, label: str | None) -> tuple[KeyInfo, str]:
    """A new key for `tenant` (created by this first key if new): its record and the key."""
    apikeys.check_tenant(tenant)
    key_id, key = apikeys.new_key()
    async with conn.transaction():
        await conn.execute(ENSURE_TENANT, tenant)
        created = await conn.fetchval(INSERT_KEY, key_id, tenant, label, apikeys.key_hash(key))
    return KeyInfo(key_id, tenant, label, created, None, None), key


async def list_keys(conn: Any, tenant: str | None = None) -> list[KeyInfo]:
    return [KeyInfo(**dict(row)) for row in await conn.fetch(SELECT_KEYS, tenant)]


async def revoke_key(conn: Any, key_id: str) -> str | None:
    """Revoke `key_id`; its tenant, or None when there is no such key."""
    tenant = await conn.fetchval(REVOKE_KEY, key_id)
    return str(tenant) if tenant is not None else None


async def owner_of(conn: Any, key: str) -> KeyOwner | None:
    """The owner of a presented key, or None when no key has that hash."""
    row = await conn.fetchrow(SELECT_CALLER, apikeys.key_hash(key), LAST_USED_RESOLUTION_SECONDS)
    if row is None:
        return None
    return KeyOwner(row["key_id"], row["tenant"], row["revoked_at"] is not None)


async def webhook_secret(conn: Any, tenant: str, *, rotate: bool = False) -> str:
    """The tenant's current webhook secret, made on first use; `rotate` replaces it (the old
    one keeps signing for the rotation window)."""
    apikeys.check_tenant(tenant)
    async with conn.transaction():
        await conn.execute(ENSURE_TENANT, tenant)
        # One rotation at a time per tenant: the lock makes "retire, insert" atomic.
        await conn.execute(LOCK_TENANT_SECRETS, tenant)
        current = await conn.fetchval(CURRENT_SECRET, tenant)
        if current is not None and not rotate:
            return str(current)
        await conn.execute(RETIRE_SECRETS, tenant)
        secret = new_webhook_secret()
        await conn.execute(INSERT_SECRET, tenant, secret)
        return secret


async def signing_secrets(conn: Any, tenant: str, rotation_seconds: float) -> list[str]:
    """The secrets that sign a delivery for `tenant` now, newest first (empty: none set)."""
    return [row["secret"] for row in await conn.fetch(SELECT_SECRETS, tenant, rotation_seconds)]
