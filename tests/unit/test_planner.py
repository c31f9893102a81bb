"""The planner's round trips run at once (the job id's claim with the source's sha256, the
announcement with the index lookup), and an error from any of them reaches the entry point
as itself, so it is classified (parked and retried, or refused) rather than taken for a
crash and dead-lettered."""

from __future__ import annotations

from typing import Any, cast

import pytest

from pixstream import errors
from pixstream.events import JOB_REQUESTED, CloudEvent, JobRequested
from pixstream.ownership import with_tenant
from pixstream.redelivery import Record
from pixstream.settings import Settings
from pixstream.worker.handling import Message
from pixstream.worker.planner import plan_job
from pixstream.worker.resources import Resources
from tests.harness import job_requested

JOB = "a" * 32


class _Storage:
    async def sha256(self, key: str) -> str | None:
        return "0" * 64


class _Resources:
    """What `plan_job` uses of the worker's resources; PostgreSQL answers by what is asked."""

    def __init__(self, *, job_id_ours: bool = True, kafka_up: bool = True) -> None:
        self.settings = Settings(reuse="on")
        self.storage = _Storage()
        self.job_id_ours = job_id_ours
        self.kafka_up = kafka_up
        self.sent: list[str] = []

    async def write_db(self, run: Any, *, what: str, job_id: str) -> Any:
        return {"claiming the job id": self.job_id_ours, "looking up renditions": {}}[what]

    async def emit(self, event: CloudEvent, *, key: str) -> None:
        if not self.kafka_up:
            raise errors.TransientError("Kafka is away")
        self.sent.append(event.type)

    async def send(self, topic: str, value: bytes, *, key: str) -> None:
        self.sent.append(topic)


def _message() -> Message[JobRequested]:
    event = with_tenant(job_requested(JOB, f"raw/{JOB}/source.jpg"), "acme")
    record = Record(topic="t.jobs", partition=0, offset=0, key=JOB.encode(), value=b"")
    return Message(record, event, JobRequested.model_validate(event.data))


async def test_a_failed_announcement_is_a_transient_error() -> None:
    res = _Resources(kafka_up=False)
    with pytest.raises(errors.TransientError, match="Kafka is away"):
        await plan_job(cast(Resources, res), _message())


async def test_a_job_id_taken_by_another_request_is_a_conflict() -> None:
    res = _Resources(job_id_ours=False)
    with pytest.raises(errors.JobIdConflict):
        await plan_job(cast(Resources, res), _message())
    assert res.sent == []


async def test_a_miss_is_announced_and_sent_as_a_task() -> None:
    res = _Resources()
    await plan_job(cast(Resources, res), _message())
    assert res.sent == [JOB_REQUESTED, res.settings.topic("op.resize")]
