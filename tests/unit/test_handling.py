"""The one way through an agent: every kind of failure gets its one answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pixstream import errors
from pixstream.db.failures import DatabaseUnavailable
from pixstream.events import JOB_REQUESTED, TASK_REQUESTED, TaskRequested, make_event
from pixstream.redelivery import Record
from pixstream.spec import StepSpec
from pixstream.worker.handling import Message, Route, deliver

pytestmark = pytest.mark.unit

TASK = TaskRequested(
    job_id="job-1",
    source_key="raw/job-1/source.jpg",
    steps=[StepSpec(id="thumb", op="thumbnail", params={"size": 64})],
)


@dataclass
class Outlets:
    """Where the entry point sends what it cannot handle, as it would to Kafka."""

    stopping: bool = False
    parked: list[tuple[Record, BaseException]] = field(default_factory=list)
    dead: list[tuple[Record, BaseException]] = field(default_factory=list)
    dlq_broken: bool = False

    async def park(self, record: Record, error: BaseException) -> None:
        self.parked.append((record, error))

    async def dead_letter(self, record: Record, error: BaseException) -> None:
        if self.dlq_broken:
            raise RuntimeError("the DLQ refused the record")
        self.dead.append((record, error))


def _record(value: bytes) -> Record:
    return Record("p.op.thumbnail", 0, 5, b"job-1", value)


TASK_RECORD = _record(make_event(TASK_REQUESTED, TASK).to_bytes())


def _route(exc: BaseException | None, refused: list[Any] | None = None) -> Route:
    async def handle(message: Message[Any]) -> None:
        assert isinstance(message.data, TaskRequested)
        if exc is not None:
            raise exc

    async def refuse(message: Message[Any], error: errors.PermanentError) -> None:
        assert refused is not None
        refused.append((message.job_id, error.code))

    return Route("op-thumbnail", frozenset({TASK_REQUESTED}), handle, refuse)


async def test_a_handled_record_goes_nowhere_else() -> None:
    out = Outlets()
    await deliver(_route(None), TASK_RECORD, out)
    assert (out.parked, out.dead) == ([], [])


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", TASK_RECORD.value[:40] if TASK_RECORD.value else b""],
)
async def test_what_cannot_be_parsed_is_dead_lettered(value: bytes) -> None:
    out = Outlets()
    await deliver(_route(None), _record(value), out)
    assert len(out.dead) == 1
    assert isinstance(out.dead[0][1], errors.InvalidEvent)


async def test_data_invalid_for_its_type_is_dead_lettered() -> None:
    out = Outlets()
    broken = make_event(TASK_REQUESTED, TASK).model_copy(update={"data": {"job_id": "job-1"}})
    await deliver(_route(None), _record(broken.to_bytes()), out)
    assert "data" in str(out.dead[0][1])


async def test_a_record_of_another_type_is_dead_lettered_with_the_types_named() -> None:
    out = Outlets()
    other = TASK_RECORD.value.replace(TASK_REQUESTED.encode(), JOB_REQUESTED.encode())  # type: ignore[union-attr]
    await deliver(_route(None), _record(other), out)
    assert "op-thumbnail takes pixstream.task.requested" in str(out.dead[0][1])


async def test_a_transient_failure_is_parked() -> None:
    out = Outlets()
    await deliver(_route(errors.TransientError("S3 timed out")), TASK_RECORD, out)
    assert [r.offset for r, _ in out.parked] == [5]
    assert out.dead == []


async def test_a_transient_failure_while_stopping_is_not_dealt_with() -> None:
    out = Outlets(stopping=True)
    with pytest.raises(DatabaseUnavailable):
        await deliver(_route(DatabaseUnavailable("PostgreSQL: gone")), TASK_RECORD, out)
    assert (out.parked, out.dead) == ([], [])


async def test_a_permanent_failure_fails_the_job_through_the_route() -> None:
    refused: list[Any] = []
    out = Outlets()
    await deliver(_route(errors.CorruptImage("bad bytes"), refused), TASK_RECORD, out)
    assert refused == [("job-1", "corrupt_image")]
    assert (out.parked, out.dead) == ([], [])


@pytest.mark.parametrize("bug", [TypeError("x"), IndexError("y"), KeyError("z")])
async def test_a_bug_is_dead_lettered_not_lost(bug: Exception) -> None:
    out = Outlets()
    await deliver(_route(bug), TASK_RECORD, out)
    assert [type(e) for _, e in out.dead] == [type(bug)]


async def test_a_dead_letter_that_cannot_be_written_leaves_the_record_undealt_with() -> None:
    # deliver raises, so the agent never marks the offset handled and it is not committed.
    out = Outlets(dlq_broken=True)
    with pytest.raises(RuntimeError, match="DLQ refused"):
        await deliver(_route(None), _record(b"not json"), out)
