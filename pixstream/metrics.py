"""Prometheus metrics of the ingress and the worker, on the default registry.

Defined once at import (a collector may be registered only once per process); the ingress
serves them at GET /metrics, the worker updates its own and exposes them the same way. Workers
under a supervisor run in prometheus_client's multiprocess mode (`worker/run.py`): counters and
histograms are summed over the processes, and each worker gauge says how it combines.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

# -- ingress ------------------------------------------------------------------------------------
HTTP_REQUESTS: Final = Counter(
    "pixstream_http_requests_total",
    "HTTP requests answered by the ingress, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS: Final = Histogram(
    "pixstream_http_request_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPLOAD_BYTES: Final = Histogram(
    "pixstream_upload_bytes",
    "Size of accepted uploads in bytes.",
    buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6),
)
JOBS: Final = Gauge(
    "pixstream_jobs",
    "Jobs recorded in PostgreSQL by status (queried at scrape time).",
    ["status"],
)

# -- worker ---------------------------------------------------------------------------------------
OP_SECONDS: Final = Histogram(
    "pixstream_op_seconds",
    "Time to run one operation on one image (decode to encode), by op.",
    ["op"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TASKS: Final = Counter(
    "pixstream_tasks_total",
    "Tasks handled by the op agents, by op and outcome (completed, failed, retried, dead).",
    ["op", "outcome"],
)
RENDERS: Final = Counter(
    "pixstream_renders_total",
    "Tasks whose source was decoded and rendered (a task whose outputs were all reused is "
    "not one), by op.",
    ["op"],
)
RENDITIONS: Final = Counter(
    "pixstream_renditions_total",
    "Outputs by how they were made: rendered, reused (copied from an earlier job's identical "
    "output), or waited (rendered by an identical task in flight, then copied).",
    ["outcome"],
)
RETRIES: Final = Counter(
    "pixstream_retries_total",
    "Messages sent to a retry topic, by retry topic.",
    ["topic"],
)
DEAD_LETTERS: Final = Counter(
    "pixstream_dead_letters_total",
    "Messages dead-lettered, by original topic and error class.",
    ["topic", "error"],
)
LANE_LAG: Final = Gauge(
    "pixstream_lane_lag",
    "Messages not yet consumed by the worker's group on the laned topics, by lane (interactive: "
    "pixstream.jobs and pixstream.op.<op>; batch: pixstream.jobs.batch and "
    "pixstream.op.<op>.batch).",
    ["lane"],
)
LANE_PAUSED: Final = Gauge(
    "pixstream_lane_paused",
    "1 while this worker holds its batch lane back (interactive work in flight or waiting).",
    ["lane"],
)
CONSUMER_LAG: Final = Gauge(
    "pixstream_consumer_lag",
    "Messages not yet consumed by the worker's group, by topic.",
    ["topic"],
    multiprocess_mode="livemostrecent",  # every process measures the same group
)
WEBHOOK_DELIVERIES: Final = Counter(
    "pixstream_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed, gone, refused).",
    ["outcome"],
)
BREAKER_OPEN: Final = Gauge(
    "pixstream_webhook_breaker_open",
    "1 while the circuit breaker of a webhook destination host is open.",
    ["host"],
    multiprocess_mode="livemax",
)
COMMIT_HELD_SECONDS: Final = Gauge(
    "pixstream_commit_held_seconds",
    "Seconds a partition's commit has waited on one unhandled message while later ones are "
    "done (0 when it moves freely), by topic and partition.",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)
TRACKER_JOBS: Final = Gauge(
    "pixstream_tracker_jobs",
    "Jobs in this process's copy of the tracker's table (ended ones are pruned).",
    multiprocess_mode="liveall",  # copies overlap (standbys): one series per process
)
WORKER_UP: Final = Gauge(
    "pixstream_worker_up",
    "1 per live worker process (by pid under a supervisor).",
    multiprocess_mode="liveall",
)
REREADS: Final = Counter(
    "pixstream_rereads_total",
    "Partitions read again from a message that was dropped before a handler finished it, by "
    "topic (a rebalance cleared the buffers, a relay deferred it, a handler gave it back).",
    ["topic"],
)
EXPIRED_UNHANDLED: Final = Counter(
    "pixstream_expired_unhandled_total",
    "Messages the broker deleted (retention) before a handler finished them, by topic: "
    "lost; the consumer goes on from the log start. Alert on any.",
    ["topic"],
)
REREADS_SKIPPED: Final = Counter(
    "pixstream_rereads_skipped_total",
    "Messages read again after a seek back that this process had handled already, by topic:"
    " not handled twice.",
    ["topic"],
)

OUTBOX_PENDING: Final = Gauge(
    "pixstream_outbox_pending",
    "Messages the ingress committed that its relay has not published yet.",
)
OUTBOX_LAG_SECONDS: Final = Gauge(
    "pixstream_outbox_lag_seconds",
    "Age of the oldest message in the ingress outbox (0 when empty).",
)
OUTBOX_PUBLISHED: Final = Counter(
    "pixstream_outbox_published_total",
    "Outbox messages the relay published to Kafka.",
)
