-- A retry (POST /v1/jobs/{id}/retry) starts a new run of a failed job: its events carry the
-- run, whose number is part of their deterministic ids, so each run ends with one terminal
-- event and one webhook of its own. Run 0 is the first; rows and events from before have it.
ALTER TABLE jobs ADD COLUMN run integer NOT NULL DEFAULT 0 CHECK (run >= 0);
