"""The notifier's pure parts: the webhook body, what each outcome does to a delivery, and
the clock that knows when a breaker half-opens."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pixstream.errors import InvalidEvent
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    STEP_COMPLETED,
    CloudEvent,
    ErrorInfo,
    JobCompleted,
    JobFailed,
    MetadataOutput,
    OutputInfo,
    StepCompleted,
    make_event,
    parse_data,
)
from pixstream.webhooks import Breakers, DeliveryResult, Outcome
from pixstream.worker.notifier import (
    BreakerClock,
    Decision,
    decide,
    refreshed_body,
    with_output_urls,
)

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEDULE = [1.0, 2.0]
THUMB = OutputInfo(key="processed/j1/thumb.jpg", format="jpeg", width=256, height=171, bytes=9)


def signer(tag: str) -> Callable[[str], str]:
    return lambda key: f"http://127.0.0.1:9000/pixstream/{key}?sig={tag}"


def completed() -> CloudEvent:
    data = JobCompleted(job_id="j1", outputs={"thumb": THUMB}, webhook_url="https://h.test/")
    return make_event(JOB_COMPLETED, data)


def test_the_body_is_the_terminal_event_with_signed_output_urls() -> None:
    event = completed()
    body = with_output_urls(event, signer("a"))
    assert (body.id, body.type, body.time) == (event.id, event.type, event.time)
    data = parse_data(body)
    assert isinstance(data, JobCompleted)
    thumb = data.outputs["thumb"]
    assert isinstance(thumb, OutputInfo)
    assert thumb.url == f"http://127.0.0.1:9000/pixstream/{THUMB.key}?sig=a"
    assert thumb.model_copy(update={"url": None}) == THUMB


def test_a_metadata_output_travels_in_the_body_unsigned() -> None:
    example = json.loads((SCHEMAS / "examples" / "pixstream.job.completed.json").read_text())
    info = MetadataOutput.model_validate(example["data"]["outputs"]["info"])
    data = JobCompleted(job_id="j1", outputs={"thumb": THUMB, "info": info})
    body = parse_data(with_output_urls(make_event(JOB_COMPLETED, data), signer("a")))
    assert isinstance(body, JobCompleted)
    assert body.outputs["info"] == info
    assert "url" not in body.outputs["info"].model_dump()
    assert isinstance(body.outputs["thumb"], OutputInfo)
    assert body.outputs["thumb"].url is not None


def test_a_failed_job_body_keeps_its_errors_and_signs_what_was_made() -> None:
    failed = JobFailed(
        job_id="j1",
        errors=[ErrorInfo(step="web", code="corrupt_image", message="truncated")],
        outputs={"thumb": THUMB},
    )
    body = with_output_urls(make_event(JOB_FAILED, failed), signer("a"))
    data = parse_data(body)
    assert isinstance(data, JobFailed)
    assert data.errors == failed.errors
    thumb = data.outputs["thumb"]
    assert isinstance(thumb, OutputInfo)
    assert thumb.url is not None


def test_only_terminal_events_become_bodies() -> None:
    step = make_event(STEP_COMPLETED, StepCompleted(job_id="j1", step="thumb", op="thumbnail"))
    with pytest.raises(InvalidEvent):
        with_output_urls(step, signer("a"))


def test_a_retry_signs_the_urls_again() -> None:
    stored = with_output_urls(completed(), signer("old")).to_bytes()
    fresh = CloudEvent.parse(refreshed_body(stored, signer("new")))
    assert fresh.data["outputs"]["thumb"]["url"].endswith("?sig=new")
    assert fresh.id == CloudEvent.parse(stored).id


def test_a_body_that_does_not_parse_is_sent_as_stored() -> None:
    assert refreshed_body(b"not json", signer("new")) == b"not json"


@pytest.mark.parametrize(
    ("outcome", "before", "expected"),
    [
        (Outcome.DELIVERED, 0, Decision("delivered", 1)),
        (Outcome.GONE, 1, Decision("gone", 2)),
        (Outcome.REJECTED, 0, Decision("failed", 1)),
        (Outcome.REFUSED, 0, Decision("refused", 1)),
        (Outcome.RETRY, 2, Decision("failed", 3)),  # the schedule had two retries
    ],
)
def test_final_outcomes(outcome: Outcome, before: int, expected: Decision) -> None:
    assert decide(outcome, before, SCHEDULE, breaker_wait=5.0) == expected


def test_a_retry_waits_by_the_schedule() -> None:
    decision = decide(Outcome.RETRY, 1, SCHEDULE, breaker_wait=5.0)
    assert (decision.state, decision.attempts) == ("pending", 2)
    assert decision.delay is not None
    assert 2.0 * 0.8 <= decision.delay <= 2.0 * 1.2


def test_an_open_breaker_postpones_without_spending_an_attempt() -> None:
    assert decide(Outcome.BREAKER_OPEN, 2, SCHEDULE, breaker_wait=7.5) == Decision(
        "pending", 2, 7.5
    )


async def test_the_clock_knows_when_a_breaker_half_opens() -> None:
    breakers = Breakers(fail_max=2, reset_timeout=30.0)
    clock = BreakerClock()
    breakers.for_host("Hooks.Example").add_listener(clock)

    async def outage() -> DeliveryResult:
        return DeliveryResult(Outcome.RETRY, 503, "HTTP 503", 0.0)

    assert clock.seconds_until_half_open("hooks.example", 30.0) == 30.0  # never opened
    for _ in range(2):
        await breakers.run("hooks.example", outage)
    assert breakers.state("hooks.example") == "open"
    assert 29.0 < clock.seconds_until_half_open("hooks.example", 30.0) <= 30.0

    breakers.for_host("hooks.example").close()
    assert "hooks.example" not in clock.opened_at
