-- Tenants own jobs and idempotency keys; API keys act as a tenant; webhook secrets are per
-- tenant. The outbox holds what the ingress committed and its relay has not yet published.
CREATE TABLE tenants (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (name) VALUES ('anonymous');

-- Only a SHA-256 of each key is kept: keys are 32 random bytes, so a slow hash adds nothing.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    tenant        text NOT NULL REFERENCES tenants (name),
    label         text,
    key_hash      bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);

-- The newest row of a tenant signs; a row retired less than the rotation window ago signs too.
CREATE TABLE webhook_secrets (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE INDEX webhook_secrets_tenant ON webhook_secrets (tenant, id);

-- A job's owner, and a digest of the job.requested that created it: the same id with
-- another digest is a conflict, the same digest a harmless duplicate.
ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'anonymous';
ALTER TABLE jobs ADD COLUMN request_hash text;
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, job_id DESC);

ALTER TABLE idempotency_keys ADD COLUMN tenant text NOT NULL DEFAULT 'anonymous';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant, key);

CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    topic          text NOT NULL,
    key            text NOT NULL,
    value          bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- A relay that took the row; past this time another may take it (the first died).
    claimed_until  timestamptz
);
