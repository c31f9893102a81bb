-- Every lifecycle event of a job, in the order the recorder saw it: what GET
-- /v1/jobs/{id}/events replays to a late subscriber and resumes from (Last-Event-ID).
-- Written in the transaction that updates the job's projection; `seq` orders the events
-- (the recorder handles a job's events in partition order) and is the subscribers' cursor.
CREATE TABLE job_events (
    seq          bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    job_id       text NOT NULL,
    type         text NOT NULL,
    event        jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
