-- Job records: a projection of the lifecycle events, written with idempotent upserts.
CREATE TABLE jobs (
    job_id        text PRIMARY KEY,
    status        text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    steps_total   integer NOT NULL CHECK (steps_total >= 0),
    spec          jsonb NOT NULL,
    source_key    text,
    webhook_url   text,
    -- step id -> {"status": "completed"|"failed", "op", "output"?: {...}, "code"?, "message"?}
    steps         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- job-level failure (no step at fault), e.g. a corrupt source: {"code", "message"}
    job_error     jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX jobs_created_at ON jobs (created_at);

-- Idempotency-Key -> the job it created, with a hash of the request that created it.
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,
    job_id        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per terminal event to deliver: the scheduled retries survive restarts.
CREATE TABLE webhook_deliveries (
    event_id         text PRIMARY KEY,
    job_id           text NOT NULL,
    url              text NOT NULL,
    body             bytea NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed', 'gone', 'refused')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
