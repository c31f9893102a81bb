-- How often the reconciler re-drove a job that made no progress (see worker/reconciler.py).
ALTER TABLE jobs ADD COLUMN redrives integer NOT NULL DEFAULT 0;
CREATE INDEX jobs_unfinished ON jobs (updated_at) WHERE status IN ('queued', 'processing');
