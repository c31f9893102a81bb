"""The recorder's batches, on values: what it writes together, what it writes alone after a
batch failed, and that an event is marked handled only once its batch is written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from pixstream.db.failures import DatabaseUnavailable
from pixstream.events import JOB_REQUESTED, CloudEvent, Data, JobRequested, SourceKey, make_event
from pixstream.redelivery import Record
from pixstream.spec import StepSpec
from pixstream.worker import recorder
from pixstream.worker.app import _handled
from pixstream.worker.handling import Message
from pixstream.worker.recorder import NotRecorded, Recorder

Batch = Sequence[tuple[str, CloudEvent, Data]]


class FakeResources:
    """What the recorder uses of the worker's Resources: the database and the DLQ."""

    def __init__(self) -> None:
        self.stopping = False
        self.dead: list[Record] = []

    async def ready(self) -> FakeResources:
        return self

    async def write_db(self, write: Callable[[Any], Awaitable[None]], **_: Any) -> None:
        await write(None)

    async def park(self, record: Record, error: BaseException) -> None:
        raise AssertionError(f"parked: {error}")

    async def dead_letter(self, record: Record, error: BaseException) -> None:
        self.dead.append(record)


def message(job_id: str, offset: int) -> Message[Data]:
    data = JobRequested(
        job_id=job_id,
        steps=[StepSpec(id="s", op="grayscale")],
        source=SourceKey(key=f"raw/{job_id}/source.jpg"),
    )
    event = make_event(JOB_REQUESTED, data)
    record = Record("t.events", 0, offset, job_id.encode(), event.to_bytes(), ())
    return Message(record, event, data)


@pytest.fixture
async def started() -> AsyncIterator[tuple[Recorder, FakeResources]]:
    res = FakeResources()
    service = Recorder(res)  # type: ignore[arg-type]
    await service.start()
    try:
        yield service, res
    finally:
        await service.stop()


async def test_what_arrives_during_a_write_is_written_next_in_one_batch(
    started: tuple[Recorder, FakeResources], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = started
    written: list[list[str]] = []
    release = asyncio.Event()

    async def record_many(conn: Any, events: Batch) -> None:
        written.append([job_id for job_id, _, _ in events])
        await release.wait()

    monkeypatch.setattr(recorder, "record_many", record_many)
    first = await service.submit(message("a", 0))
    await asyncio.sleep(0.01)  # being written, alone: nothing waits for more
    assert written == [["a"]]
    rest = [await service.submit(message(j, n)) for n, j in enumerate("bcd", 1)]
    assert not first.done()  # not written until its transaction returns
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 1)
    assert written == [["a"], ["b", "c", "d"]]


async def test_a_batch_gathers_for_its_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[list[str]] = []

    async def record_many(conn: Any, events: Batch) -> None:
        written.append([job_id for job_id, _, _ in events])

    monkeypatch.setattr(recorder, "record_many", record_many)
    service = Recorder(FakeResources(), linger=0.2)  # type: ignore[arg-type]
    await service.start()
    try:
        first = await service.submit(message("a", 0))
        await asyncio.sleep(0.05)
        assert written == []  # gathering
        later = await service.submit(message("b", 1))
        await asyncio.wait_for(asyncio.gather(first, later), 1)
    finally:
        await service.stop()
    assert written == [["a", "b"]]


async def test_a_failed_batch_is_written_one_by_one_and_a_bad_event_dead_lettered_alone(
    started: tuple[Recorder, FakeResources], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, res = started
    written: list[list[str]] = []
    release = asyncio.Event()

    async def record_many(conn: Any, events: Batch) -> None:
        await release.wait()
        if any(job_id == "bad" for job_id, _, _ in events):
            raise ValueError("a statement's error")
        written.append([job_id for job_id, _, _ in events])

    monkeypatch.setattr(recorder, "record_many", record_many)
    blocker = await service.submit(message("first", 0))
    await asyncio.sleep(0.01)
    futures = [await service.submit(message(j, n)) for n, j in enumerate(["x", "bad", "y"], 1)]
    release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *futures), 1)
    assert written == [["first"], ["x"], ["y"]]
    assert [r.key_text for r in res.dead] == ["bad"]


async def test_an_event_is_handled_only_once_its_batch_is_written(
    started: tuple[Recorder, FakeResources], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, res = started
    calls: list[str] = []

    class Consumer:
        def handled(self, message: Any) -> None:
            calls.append(f"handled {message}")

        def given_back(self, message: Any) -> None:
            calls.append(f"given back {message}")

    async def down(conn: Any, events: Batch) -> None:
        res.stopping = True  # the worker stops while PostgreSQL is away
        raise DatabaseUnavailable("PostgreSQL: gone")

    monkeypatch.setattr(recorder, "record_many", down)
    lost = await service.submit(message("a", 0))
    _handled(Consumer(), "a@0", "lifecycle", lost)  # type: ignore[arg-type]
    with pytest.raises(NotRecorded):
        await asyncio.wait_for(lost, 1)
    await asyncio.sleep(0)
    assert calls == ["given back a@0"]  # its offset is not committed: read again

    # Read again by the next consumer of the partition: recorded, then handled.
    again = Recorder(FakeResources())  # type: ignore[arg-type]
    written: list[str] = []

    async def up(conn: Any, events: Batch) -> None:
        written.extend(job_id for job_id, _, _ in events)

    monkeypatch.setattr(recorder, "record_many", up)
    await again.start()
    try:
        done = await again.submit(message("a", 0))
        _handled(Consumer(), "a@0", "lifecycle", done)  # type: ignore[arg-type]
        await asyncio.wait_for(done, 1)
        await asyncio.sleep(0)
    finally:
        await again.stop()
    assert written == ["a"]
    assert calls == ["given back a@0", "handled a@0"]
