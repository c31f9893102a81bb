"""CloudEvents 1.0 (structured JSON) envelope and the data model of every PixStream event type.

These models are the source of `schemas/`. Event ids are deterministic per job, run and step,
so a redelivered step republishes the same id and consumers deduplicate on it; a retry's run
(`run` > 0, see `JobRetried`) has ids of its own, so its terminal event is a new one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    HttpUrl,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from pixstream import errors
from pixstream.ops.analysis import Analysis
from pixstream.ops.operation import describe_errors
from pixstream.spec import ID_PATTERN, INTERACTIVE, Priority, StepSpec

JOB_REQUESTED: Final = "pixstream.job.requested"
STEP_COMPLETED: Final = "pixstream.step.completed"
STEP_FAILED: Final = "pixstream.step.failed"
JOB_COMPLETED: Final = "pixstream.job.completed"
JOB_FAILED: Final = "pixstream.job.failed"
TASK_REQUESTED: Final = "pixstream.task.requested"  # internal: on pixstream.op.<op> topics
JOB_RETRIED: Final = "pixstream.job.retried"
TASK_STARTED: Final = "pixstream.task.started"
#: The events that end a run (a retry opens the next one).
TERMINAL_TYPES: Final = frozenset({JOB_COMPLETED, JOB_FAILED})
#: A job's lifecycle on the events topic: what the record, the log and the streams follow.
LIFECYCLE_TYPES: Final = frozenset(
    {
        JOB_REQUESTED,
        JOB_RETRIED,
        TASK_STARTED,
        STEP_COMPLETED,
        STEP_FAILED,
        JOB_COMPLETED,
        JOB_FAILED,
    }
)

DEFAULT_SOURCE: Final = "/pixstream"

JobId = Annotated[str, Field(pattern=ID_PATTERN)]
#: Which run of its job an event belongs to: 0 for the first, one more for each retry. Events
#: from before retries existed have none, so it defaults to 0.
Run = Annotated[int, Field(ge=0)]


class Data(BaseModel):
    """Base of every event's data: strict about fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceKey(Data):
    """The source is an object already in the bucket."""

    key: str = Field(min_length=1, max_length=1024, examples=["raw/job-123/source.jpg"])


class SourceUrl(Data):
    """The source is fetched from an https URL."""

    url: HttpUrl = Field(json_schema_extra={"pattern": "^https://"})

    @field_validator("url")
    @classmethod
    def _https_only(cls, value: HttpUrl) -> HttpUrl:
        if value.scheme != "https":
            raise ValueError("only https URLs are accepted")
        return value


SourceRef = SourceKey | SourceUrl


class OutputInfo(Data):
    """An output object in the bucket (an image step's output)."""

    kind: Literal["image"] = "image"
    key: str
    format: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bytes: int = Field(ge=0)
    url: str | None = None
    reused_from: JobId | None = Field(
        default=None,
        exclude_if=lambda v: v is None,  # absent unless reused: outputs as before v2
        description="The job whose identical output (same source bytes, steps and engine) "
        "was copied instead of rendered again.",
    )


class MetadataOutput(Data):
    """A metadata step's output (analyze): a report, no object in the bucket."""

    kind: Literal["metadata"] = "metadata"
    data: Analysis
    reused_from: JobId | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="The job whose identical report was reused instead of made.",
    )


def _output_kind(value: Any) -> str:
    # Outputs recorded before metadata outputs existed have no `kind`: they are images.
    kind = value.get("kind", "image") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) else "image"


#: A step's output: an object in the bucket, or a metadata report (`kind` tells which).
Output = Annotated[
    Annotated[OutputInfo, Tag("image")] | Annotated[MetadataOutput, Tag("metadata")],
    Discriminator(_output_kind),
]
OUTPUT: Final[TypeAdapter[OutputInfo | MetadataOutput]] = TypeAdapter(Output)


class ErrorInfo(Data):
    """Why a job (or one of its steps, when `step` is set) failed."""

    step: str | None
    code: str
    message: str


class JobRequested(Data):
    """A job to run: from the ingress or from any other system."""

    job_id: JobId
    steps: list[StepSpec] = Field(min_length=1)
    webhook_url: str | None = None
    source: SourceRef
    priority: Priority = Field(
        default=INTERACTIVE,
        exclude_if=lambda v: v == INTERACTIVE,  # absent when interactive: requests as before v2
        description="`batch`: its task waits on `<prefix>.op.<op>.batch`, consumed only while "
        "the interactive op topics have nothing waiting. Sent to `<prefix>.jobs.batch` (as the "
        "ingress does), the request itself is planned in that lane too.",
    )


class TaskRequested(Data):
    """Internal: run `steps` of a job on the source object (one op topic per first step)."""

    job_id: JobId
    source_key: str = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)
    attempt: int = Field(default=0, ge=0)
    tenant: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="The job's tenant: outputs are reused only within it. A task without "
        "one (sent before v2) renders everything.",
    )
    run: Run = 0
    source_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        exclude_if=lambda v: v is None,
        description="The source's sha256 (hex) when the planner learned it from the "
        "endpoint's checksum: the op agent keys render once by it instead of hashing the "
        "bytes it reads.",
    )


class TaskStarted(Data):
    """An op agent took a task: the job is `processing` from then on.

    Each of the task's step results follows as soon as that step is done. A redelivered
    task publishes it again with the same id (`{job}.task.started.{first step}`)."""

    job_id: JobId
    op: str = Field(description="The op agent that took the task (its first step's op).")
    steps: list[str] = Field(min_length=1, description="The ids of the task's steps.")
    run: Run = 0


class StepCompleted(Data):
    """A step finished; `output` is set when the step is an output of the job."""

    job_id: JobId
    step: str
    op: str
    output: Output | None = None
    run: Run = 0


class StepFailed(Data):
    """A step failed permanently (or was skipped because its input failed)."""

    job_id: JobId
    step: str
    op: str
    code: str
    message: str
    run: Run = 0


class JobCompleted(Data):
    """Every output of the job exists."""

    job_id: JobId
    outputs: dict[str, Output]
    webhook_url: str | None = None
    run: Run = 0


class JobFailed(Data):
    """The job ended with at least one error; `outputs` lists what was still made."""

    job_id: JobId
    errors: list[ErrorInfo] = Field(min_length=1)
    outputs: dict[str, Output] = Field(default_factory=dict)
    webhook_url: str | None = None
    run: Run = 0


class JobRetried(Data):
    """A failed job runs again (`POST /v1/jobs/{id}/retry`): the steps no kept output needs.

    `outputs` are the outputs that succeeded before, kept as they are (their objects are not
    written again); every other output is rendered anew from the retained `source_key`, with
    the steps on its path. `run` numbers this run; its events carry it.
    """

    job_id: JobId
    run: int = Field(ge=1)
    steps: list[StepSpec] = Field(min_length=1)
    source_key: str = Field(min_length=1)
    outputs: dict[str, Output] = Field(default_factory=dict)
    webhook_url: str | None = None
    priority: Priority = Field(
        default=INTERACTIVE,
        exclude_if=lambda v: v == INTERACTIVE,
        description="The job's own: a batch job's retry runs in the batch lane too (the "
        "ingress sends it to `<prefix>.jobs.batch`).",
    )


DATA_MODELS: Final[dict[str, type[Data]]] = {
    JOB_REQUESTED: JobRequested,
    STEP_COMPLETED: StepCompleted,
    STEP_FAILED: StepFailed,
    JOB_COMPLETED: JobCompleted,
    JOB_FAILED: JobFailed,
    TASK_REQUESTED: TaskRequested,
    JOB_RETRIED: JobRetried,
    TASK_STARTED: TaskStarted,
}


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 structured-mode JSON event; extension attributes are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, raw: bytes | str) -> CloudEvent:
        """The event in `raw`; InvalidEvent when it is not a CloudEvent."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise errors.InvalidEvent(describe_errors(exc, "event")) from exc


def event_id_for(job_id: str, type: str, step: str | None = None, run: int = 0) -> str:
    """A deterministic id: `job-123.job.completed`, `job-123.step.completed.thumb`; a retry's
    run says its number (`job-123.r1.job.completed`), so the first run's ids are unchanged."""
    short = type.removeprefix("pixstream.")
    head = job_id if run == 0 else f"{job_id}.r{run}"
    return f"{head}.{short}" if step is None else f"{head}.{short}.{step}"


def _id_step(data: Data) -> str | None:
    # A task is named by its first step (a job has one task per run); a step event by its step.
    if isinstance(data, TaskRequested):
        return data.steps[0].id
    if isinstance(data, TaskStarted):
        return data.steps[0]
    return getattr(data, "step", None)


def make_event(
    type: str,
    data: Data,
    *,
    id: str | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> CloudEvent:
    """Wrap `data` in an envelope; the id defaults to the deterministic one for its job/step."""
    if DATA_MODELS.get(type) is not data.__class__:
        raise TypeError(f"{data.__class__.__name__} is not the data of {type!r}")
    if id is None:
        step = _id_step(data)
        run = getattr(data, "run", 0)
        id = event_id_for(getattr(data, "job_id", "unknown"), type, step, run)
    return CloudEvent(
        id=id,
        source=source,
        type=type,
        time=time or datetime.now(UTC),
        data=data.model_dump(mode="json"),
    )


def parse_data(event: CloudEvent) -> Data:
    """The typed data of an event; InvalidEvent for an unknown type or invalid data."""
    model = DATA_MODELS.get(event.type)
    if model is None:
        raise errors.InvalidEvent(f"type: unknown event type {event.type!r}")
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise errors.InvalidEvent(describe_errors(exc, "data")) from exc
