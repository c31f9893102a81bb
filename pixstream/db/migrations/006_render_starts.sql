-- Renders started and not concluded, per task (its CloudEvent id): the count survives a
-- worker SIGKILL, so a task that kills its renderer (or its worker) twice is failed with
-- worker_crashed instead of being redelivered forever.
CREATE TABLE render_starts (
    task_id     text PRIMARY KEY,
    job_id      text NOT NULL,
    starts      integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
