-- Render once: the outputs already rendered, by what makes them the same rendering (tenant,
-- source sha256, canonical step chain, engine version), with the object a later job copies
-- and until when it is retained. A row is first a claim (`rendering`, held by one task under
-- a lease it renews) so identical jobs in flight at once render once, then `ready`.
CREATE TABLE renditions (
    tenant          text NOT NULL,
    source_sha256   text NOT NULL,
    chain_key       text NOT NULL,
    engine          text NOT NULL,
    chain           jsonb NOT NULL,
    state           text NOT NULL CHECK (state IN ('rendering', 'ready')),
    claimed_by      text,
    claimed_until   timestamptz,
    job_id          text,
    object_key      text,
    output          jsonb,
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, source_sha256, chain_key, engine),
    CHECK (state = 'rendering' OR (job_id IS NOT NULL AND output IS NOT NULL
                                   AND expires_at IS NOT NULL)),
    CHECK (state = 'ready' OR (claimed_by IS NOT NULL AND claimed_until IS NOT NULL))
);
CREATE INDEX renditions_expires_at ON renditions (expires_at);
