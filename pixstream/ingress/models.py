"""The shapes of the HTTP API's bodies: the handlers build their answers with these models and
the OpenAPI document is generated from the same ones, so the two cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pixstream.ops.analysis import Analysis
from pixstream.spec import ID_PATTERN


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PresetRequest(Model):
    """A spec naming a preset instead of writing the steps."""

    preset: str = Field(examples=["web"])
    webhook_url: str | None = Field(default=None, max_length=2048)


class JobLinks(Model):
    self_: str = Field(alias="self", examples=["/v1/jobs/4f1c..."])


class JobAccepted(Model):
    """The job is stored and queued; poll `links.self` for its progress."""

    job_id: str = Field(pattern=ID_PATTERN)
    status: Literal["queued"] = "queued"
    links: JobLinks


class RetryAccepted(Model):
    """The retry is queued: the job is `processing` again, in run `run`; follow `links.self`."""

    job_id: str = Field(pattern=ID_PATTERN)
    status: Literal["processing"] = "processing"
    run: int = Field(ge=1, description="This retry's run: 1 for the first retry.")
    links: JobLinks


class Progress(Model):
    steps_total: int = Field(ge=0)
    steps_done: int = Field(ge=0)


class OutputView(Model):
    """An output object; `url` is a presigned GET, null once the job has expired."""

    kind: Literal["image"] = "image"
    url: str | None
    key: str
    format: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bytes: int = Field(ge=0)
    reused_from: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,  # present only on a reused output, as the contract says
        description="The job whose identical output (same source bytes, steps and engine) "
        "was copied instead of rendered again.",
    )


class MetadataView(Model):
    """A metadata step's output (analyze): its report, no object."""

    kind: Literal["metadata"] = "metadata"
    data: Analysis
    reused_from: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="The job whose identical report was reused instead of made.",
    )


class ErrorView(Model):
    """Why the job (step null) or one of its steps failed."""

    step: str | None
    code: str
    message: str


class WebhookView(Model):
    """The delivery of the job's terminal event to its webhook_url."""

    state: Literal["pending", "delivered", "failed", "gone", "refused"]
    attempts: int = Field(ge=0)
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class JobView(Model):
    """A job as recorded: status, progress, outputs and errors of its current run."""

    job_id: str
    status: Literal["queued", "processing", "completed", "failed"]
    run: int = Field(
        ge=0,
        description="The current run: 0 for the first, one more for each retry "
        "(`POST /v1/jobs/{job_id}/retry`); its events carry it too.",
    )
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    expired: bool = Field(description="The job's objects are past retention; urls are null.")
    progress: Progress
    outputs: dict[str, OutputView | MetadataView]
    errors: list[ErrorView]
    webhook: WebhookView | None


class JobList(Model):
    """A page of the caller's jobs, newest first."""

    jobs: list[JobView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class OperationInfo(Model):
    name: str
    description: str
    params: dict[str, Any] = Field(description="JSON Schema of the op's params.")


class OperationList(Model):
    operations: list[OperationInfo]


class PresetInfo(Model):
    name: str
    steps: list[dict[str, Any]]


class PresetList(Model):
    presets: list[PresetInfo]


class CheckView(Model):
    ok: bool
    detail: str


class HealthView(Model):
    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckView]
