"""CloudEvents envelope and event data models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pixstream import errors, events
from pixstream.spec import StepSpec

pytestmark = pytest.mark.unit

OUTPUT = events.OutputInfo(
    key="processed/j1/t.jpg", format="jpeg", width=256, height=171, bytes=1234
)


def test_event_id_is_deterministic() -> None:
    assert events.event_id_for("job-123", events.JOB_COMPLETED) == "job-123.job.completed"
    assert (
        events.event_id_for("job-123", events.STEP_COMPLETED, "thumb")
        == "job-123.step.completed.thumb"
    )
    first = events.make_event(
        events.STEP_COMPLETED, events.StepCompleted(job_id="j1", step="t", op="thumbnail")
    )
    again = events.make_event(
        events.STEP_COMPLETED, events.StepCompleted(job_id="j1", step="t", op="thumbnail")
    )
    assert first.id == again.id == "j1.step.completed.t"


def test_round_trip_through_bytes() -> None:
    data = events.JobCompleted(job_id="j1", outputs={"t": OUTPUT}, webhook_url=None)
    event = events.make_event(events.JOB_COMPLETED, data, time=datetime(2025, 1, 1, tzinfo=UTC))
    raw = event.to_bytes()
    body = json.loads(raw)
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["type"] == "pixstream.job.completed"
    assert body["source"] == "/pixstream"
    parsed = events.CloudEvent.parse(raw)
    assert parsed == event
    assert events.parse_data(parsed) == data


def test_envelope_keeps_extension_attributes() -> None:
    event = events.make_event(
        events.JOB_FAILED,
        events.JobFailed(
            job_id="j1", errors=[events.ErrorInfo(step=None, code="corrupt_image", message="bad")]
        ),
    )
    body = json.loads(event.to_bytes())
    body["traceparent"] = "00-abc-def-01"
    parsed = events.CloudEvent.parse(json.dumps(body))
    assert parsed.model_dump()["traceparent"] == "00-abc-def-01"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"specversion": "0.3", "id": "x", "source": "s", "type": "t",'
        b' "time": "2025-01-01T00:00:00Z", "data": {}}',
    ],
)
def test_invalid_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(errors.InvalidEvent):
        events.CloudEvent.parse(raw)


def test_data_is_strict() -> None:
    event = events.make_event(
        events.STEP_FAILED,
        events.StepFailed(job_id="j1", step="a", op="blur", code="invalid_params", message="m"),
    )
    bad = event.model_copy(update={"data": {**event.data, "surprise": 1}})
    with pytest.raises(errors.InvalidEvent, match=r"data\.surprise"):
        events.parse_data(bad)
    unknown = event.model_copy(update={"type": "pixstream.nothing"})
    with pytest.raises(errors.InvalidEvent, match="unknown event type"):
        events.parse_data(unknown)


def test_job_requested_sources() -> None:
    steps = [StepSpec(id="t", op="thumbnail", params={"size": 64})]
    by_key = events.JobRequested(job_id="j1", steps=steps, source={"key": "raw/j1/source.jpg"})
    assert isinstance(by_key.source, events.SourceKey)
    by_url = events.JobRequested.model_validate(
        {
            "job_id": "j1",
            "steps": [s.model_dump() for s in steps],
            "source": {"url": "https://example.com/a.jpg"},
        }
    )
    assert isinstance(by_url.source, events.SourceUrl)
    with pytest.raises(ValueError, match="https"):
        events.JobRequested.model_validate(
            {"job_id": "j1", "steps": [], "source": {"url": "http://example.com/a.jpg"}}
        )
    with pytest.raises(ValueError, match="pattern"):
        events.JobRequested(job_id="bad id", steps=steps, source={"key": "k"})


def test_make_event_refuses_mismatched_data() -> None:
    with pytest.raises(TypeError):
        events.make_event(
            events.JOB_COMPLETED,
            events.StepFailed(job_id="j", step="a", op="b", code="c", message="m"),
        )


def test_task_event_id_names_its_first_step() -> None:
    task = events.TaskRequested(
        job_id="j1",
        source_key="raw/j1/source.jpg",
        steps=[StepSpec(id="web", op="resize", params={"width": 10})],
    )
    assert events.make_event(events.TASK_REQUESTED, task).id == "j1.task.requested.web"
