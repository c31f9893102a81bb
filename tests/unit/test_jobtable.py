"""The tracker's table waits for its own changelog writes: a write the broker took ends the
wait, one it refused is sent again with the key's value now, one never acknowledged is a
TransientError (the event is handled again later), never a silent success as with Faust's
`producer.flush()`."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from pixstream import errors
from pixstream.worker import jobtable
from pixstream.worker.jobtable import JobTable


class _Sent:
    """What the table gave its changelog: each write's key, value and future."""

    def __init__(self) -> None:
        self.writes: list[tuple[Any, Any, asyncio.Future[Any]]] = []

    def __call__(self, partition: int | None, key: Any, value: Any, *a: Any, **k: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.message = type("Message", (), {"partition": partition})()  # type: ignore[attr-defined]
        self.writes.append((key, value, fut))
        return fut


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> tuple[JobTable, _Sent]:
    app = faust.App("jobtable-test", broker="kafka://127.0.0.1:9092", web_enabled=False)
    table = JobTable(app, name="jobs", default=None, key_type=str, value_type=None)
    sent = _Sent()
    # Below JobTable: Faust's own send, which would need a running producer.
    monkeypatch.setattr(faust.Table, "send_changelog", lambda self, *a, **k: sent(*a, **k))
    return table, sent


async def test_a_write_the_broker_took_ends_the_wait(table: tuple[JobTable, _Sent]) -> None:
    jobs, sent = table
    jobs.send_changelog(3, "job", "v1")
    waiting = asyncio.create_task(jobs.written("job"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    sent.writes[0][2].set_result("offset 7")
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(jobs.written("job"), 1)  # nothing left to wait for: at once


async def test_a_refused_write_is_sent_again_with_the_value_now(
    table: tuple[JobTable, _Sent],
) -> None:
    jobs, sent = table
    jobs.data["job"] = "v2"  # the table's value since the write
    jobs.send_changelog(3, "job", "v1")
    sent.writes[0][2].set_exception(RuntimeError("NotLeaderForPartition"))
    waiting = asyncio.create_task(jobs.written("job"))
    await asyncio.sleep(0.01)
    assert [(k, v) for k, v, _ in sent.writes] == [("job", "v1"), ("job", "v2")]
    assert sent.writes[1][2].message.partition == 3  # type: ignore[attr-defined]
    sent.writes[1][2].set_result("offset 8")
    await asyncio.wait_for(waiting, 1)


async def test_a_write_refused_every_time_is_a_transient_error(
    table: tuple[JobTable, _Sent],
) -> None:
    jobs, sent = table
    jobs.data["job"] = "v1"
    jobs.send_changelog(0, "job", "v1")

    async def refuse() -> None:
        while True:
            for _, _, fut in sent.writes:
                if not fut.done():
                    fut.set_exception(RuntimeError("refused"))
            await asyncio.sleep(0)

    refusing = asyncio.create_task(refuse())
    try:
        with pytest.raises(errors.TransientError, match="refused"):
            await asyncio.wait_for(jobs.written("job"), 1)
    finally:
        refusing.cancel()
    assert len(sent.writes) == jobtable.WRITE_ATTEMPTS


async def test_a_write_never_acknowledged_is_a_transient_error(
    table: tuple[JobTable, _Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, _ = table
    monkeypatch.setattr(jobtable, "WRITE_SECONDS", 0.05)
    jobs.send_changelog(0, "job", "v1")
    with pytest.raises(errors.TransientError, match="not acknowledged"):
        await jobs.written("job")
