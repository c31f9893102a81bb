"""All configuration, read once from `PIXSTREAM_*` variables (or `.env`) and passed down.

The defaults are the local stack that `pixstream stack up` starts, so a fresh checkout runs
without any configuration. There is no module-level instance: the CLI builds one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# About a day of webhook retries: seconds before attempts 2, 3, ... (each +-20% jitter).
WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (
    5,
    30,
    2 * 60,
    10 * 60,
    30 * 60,
    60 * 60,
    2 * 60 * 60,
    4 * 60 * 60,
    8 * 60 * 60,
    8 * 60 * 60,
)

DEFAULT_PRESETS: dict[str, dict[str, Any]] = {
    "web": {
        "steps": [
            {"id": "web", "op": "resize", "params": {"width": 1024}},
            {
                "id": "webp",
                "op": "convert",
                "params": {"format": "webp", "quality": 80},
                "input": "web",
            },
        ]
    },
    "avatar": {
        "steps": [
            {"id": "square", "op": "crop", "params": {"aspect": "1:1", "gravity": "entropy"}},
            {"id": "avatar", "op": "thumbnail", "params": {"size": 256}, "input": "square"},
        ]
    },
}


#: Published in this repository, so it authenticates nothing: for the loopback default only.
BUILT_IN_WEBHOOK_SECRET: Final = "whsec_cGl4c3RyZWFtLWxvY2FsLXdlYmhvb2stc2VjcmV0"


class Settings(BaseSettings):
    """PixStream's settings; every field is `PIXSTREAM_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="PIXSTREAM_", env_file=".env", extra="ignore", frozen=True
    )

    # Services
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: SecretStr = SecretStr("postgresql://pixstream:pixstream@127.0.0.1:5432/pixstream")
    s3_endpoint_url: str = "http://127.0.0.1:9000"
    s3_bucket: str = "pixstream"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "pixstream"
    s3_secret_access_key: SecretStr = SecretStr("pixstream-local-secret")

    # Naming: every topic is `<topic_prefix>.<name>`; tests isolate themselves by prefix.
    topic_prefix: str = "pixstream"
    # The Faust application id (consumer group and changelog topic names derive from it).
    app_id: str = "pixstream"

    # HTTP ingress
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # GET /v1/jobs/{id}/events: streams open at once per ingress process (one more is a 503),
    # and the longest silence on a stream before a comment line (the contract says 15 s).
    max_event_subscribers: int = Field(default=1000, gt=0)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=15.0)
    # Job creations per minute per API key (per client address for the anonymous tenant),
    # in bursts of up to as many; 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # Requests without an API key act as the `anonymous` tenant: `on` (any job), `presets`
    # (only `{"preset": ...}` jobs) or `off` (401). `on` off loopback is warned about.
    anonymous: Literal["on", "presets", "off"] = "on"
    # A separate listener for /metrics and /health (0: served on the main port), so they
    # need not face the clients.
    admin_port: int = Field(default=0, ge=0, le=65535)
    admin_host: str = "127.0.0.1"

    # Webhooks. The secret signs the anonymous tenant's webhooks (and those of tenants
    # without one of their own): the built-in one is refused on a non-loopback bind.
    webhook_secret: SecretStr = SecretStr(BUILT_IN_WEBHOOK_SECRET)
    webhook_allow_private: bool = False
    # After `pixstream keys webhook-secret --rotate`, deliveries carry both signatures this long.
    webhook_rotation_seconds: float = Field(default=86_400.0, ge=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Seconds before attempts 2, 3, ... of a delivery (each +-20% jitter); when spent, failed.
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: list(WEBHOOK_RETRY_SCHEDULE)
    )
    # Outages in a row that open a destination host's circuit breaker, and how long it stays
    # open before one trial request may go through.
    webhook_breaker_fail_max: int = Field(default=5, gt=0)
    webhook_breaker_reset_seconds: float = Field(default=60.0, gt=0)
    # How often each worker process looks for due deliveries.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)

    # Limits
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    max_steps: int = Field(default=16, gt=0)
    max_frames: int = Field(default=100, gt=0)
    # `max_pixels` bounds every frame, all frames of an animation together, and every step's
    # output. Submissions read at once by the ingress (each holds up to ~2x max_upload_bytes);
    # one more waits up to 2 s for a slot, then is answered 503 with Retry-After.
    max_uploads_in_flight: int = Field(default=16, gt=0)
    # Address-space limit (RLIMIT_AS) of each render process: a bomb past the checks ends
    # that process with worker_crashed, not the worker. Virtual memory: leave room above RSS.
    render_memory_limit_bytes: int = Field(default=1_200_000_000, gt=0)
    # Wall time one task's render may take before its process is killed and the task fails
    # with render_timeout (the slowest legitimate job, 16 steps at max_pixels, takes far less).
    render_timeout_seconds: float = Field(default=120.0, gt=0)
    # A `source.key` of a job produced to Kafka must start with one of these; any other key
    # fails the job with `source_forbidden` before the object is read.
    source_key_prefixes: list[str] = Field(default_factory=lambda: ["raw/"], min_length=1)
    source_fetch_timeout_seconds: float = Field(default=15.0, gt=0)
    # Lets `source.url` jobs fetch from loopback/private addresses: development and tests only.
    source_allow_private: bool = False

    # Retention and presigning
    retention_seconds: int = Field(default=86_400, gt=0)
    # URLs are signed at the start of a window and stay valid for a full hour past its end,
    # so every read gets at least an hour and the same URL within one window.
    presign_window_seconds: int = Field(default=3_600, gt=0)

    # Worker
    worker_threads: int = Field(default=0, ge=0)  # 0: one per core
    retry_attempts: int = Field(default=5, ge=0)
    # Tasks one op agent of one process renders at once: while one waits on S3 or Kafka,
    # another uses the core. Safe because offsets commit only past finished tasks.
    worker_concurrency: int = Field(default=2, gt=0)
    # Render once: an output whose source bytes, steps and engine match one still retained
    # for the same tenant is copied, not rendered. `keyed`: not for the anonymous tenant
    # (whose jobs anyone holding the id may read, and `reused_from` names the earlier job).
    reuse: Literal["on", "keyed", "off"] = "on"
    # The reconciler's safety net: a job with no progress for this long, while nothing for it
    # waits in any topic, retry tier or the DLQ, is sent through the pipeline again; after
    # max_redrives it fails with `stalled` (through the tracker, so it ends once).
    stall_seconds: float = Field(default=60.0, gt=0)
    max_redrives: int = Field(default=2, ge=0)
    # Ended jobs, idempotency keys, webhook deliveries and dead-letter replays older than this
    # are deleted from PostgreSQL, and ended jobs from the tracker's table (tombstoned).
    prune_after_seconds: int = Field(default=7 * 86_400, gt=0)
    prune_interval_seconds: float = Field(default=600.0, gt=0)
    # Prometheus metrics of a worker process (0: off); the ingress serves its own at /metrics.
    worker_metrics_port: int = Field(default=9108, ge=0, le=65535)
    # A worker asked to stop (SIGTERM, SIGINT) exits after this long even if its shutdown has
    # not finished (Kafka or PostgreSQL gone: nothing to commit to); supervisors SIGKILL what
    # is left of their process trees a few seconds later.
    worker_stop_seconds: float = Field(default=15.0, gt=0)
    # How long the recorder lets a batch gather after its first event before writing it: a
    # job's events land in PostgreSQL up to this much after they are on Kafka (the tracker,
    # the terminal event and webhooks do not wait), in far fewer transactions.
    recorder_linger_seconds: float = Field(default=0.05, ge=0)

    presets: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_PRESETS))

    # Local stack state
    home: Path = Path(".pixstream")

    def topic(self, name: str) -> str:
        """The full Kafka topic name for a declared topic, e.g. `jobs` -> `pixstream.jobs`."""
        return f"{self.topic_prefix}.{name}"
