"""Priority lanes on values: which topic a request, a retry, a re-drive and a task of each
priority go to, which lane each declared topic counts in (steering and /metrics), and the
steering tick pausing the batch requests' partitions with the batch tasks'."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import TP

from pixstream.events import CloudEvent, JobRequested, JobRetried
from pixstream.ops import OPERATIONS
from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE
from pixstream.topics import jobs_topic, lane_of, lane_topics, load_topics, op_topic
from pixstream.worker.commits import FetchState
from pixstream.worker.handling import Message, Route
from pixstream.worker.lag import lane_lag
from pixstream.worker.lanes import Lanes
from pixstream.worker.reconciler import Reconciler, group_topics

pytestmark = pytest.mark.unit

SETTINGS = Settings.model_construct(topic_prefix="t")
STEPS = [{"id": "thumb", "op": "thumbnail", "params": {"size": 64}}]


def test_a_batch_request_and_its_tasks_take_the_batch_lane() -> None:
    assert jobs_topic(INTERACTIVE) == "jobs"
    assert jobs_topic(BATCH) == "jobs.batch"
    assert op_topic("resize", INTERACTIVE) == "op.resize"
    assert op_topic("resize", BATCH) == "op.resize.batch"
    assert lane_topics(SETTINGS, BATCH, ["crop"]) == ["t.jobs.batch", "t.op.crop.batch"]
    assert lane_topics(SETTINGS, INTERACTIVE, ["crop"]) == ["t.jobs", "t.op.crop"]


def test_every_lane_topic_is_declared_and_counts_in_its_lane() -> None:
    declared = {t.name for t in load_topics(SETTINGS)}
    for priority in (INTERACTIVE, BATCH):
        topics = lane_topics(SETTINGS, priority, OPERATIONS)
        assert set(topics) <= declared  # `pixstream topics apply` creates them all
        assert {lane_of(t.removeprefix("t.")) for t in topics} == {priority}
    unlaned = declared - set(lane_topics(SETTINGS, INTERACTIVE, OPERATIONS))
    unlaned -= set(lane_topics(SETTINGS, BATCH, OPERATIONS))
    assert {t.removeprefix("t.") for t in unlaned if t.startswith("t.")} == {
        "events",
        "dlq",
        "retry.5s",
        "retry.30s",
        "retry.2m",
    }
    assert {lane_of(t.removeprefix("t.")) for t in unlaned} == {None}


def test_the_batch_lanes_lag_counts_the_batch_requests() -> None:
    topics = ["t.jobs", "t.jobs.batch", "t.op.crop", "t.op.crop.batch", "t.events"]
    lag = {"t.jobs": 1, "t.jobs.batch": 300, "t.op.crop": 2, "t.op.crop.batch": 7, "t.events": 9}
    assert lane_lag(lag, topics, "t") == {INTERACTIVE: 3, BATCH: 307}


def test_the_reconciler_counts_the_batch_requests_among_the_waiting() -> None:
    assert {"t.jobs", "t.jobs.batch", "t.op.crop.batch"} <= set(group_topics(SETTINGS))


class Sent:
    """The reconciler's Resources, as far as a re-drive uses them."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.sent: list[tuple[str, CloudEvent]] = []

    async def send(self, topic: str, value: bytes, *, key: str, headers: Any = None) -> None:
        self.sent.append((topic, CloudEvent.parse(value)))


@pytest.mark.parametrize(
    ("priority", "run", "topic", "data"),
    [
        (INTERACTIVE, 0, "t.jobs", JobRequested),
        (BATCH, 0, "t.jobs.batch", JobRequested),
        (BATCH, 1, "t.jobs.batch", JobRetried),
    ],
)
async def test_a_re_drive_keeps_the_jobs_lane(
    priority: str, run: int, topic: str, data: type[Any]
) -> None:
    res = Sent()
    spec: dict[str, Any] = {"steps": STEPS}
    if priority == BATCH:
        spec["priority"] = BATCH
    job = {
        "job_id": "j1",
        "spec": json.dumps(spec),
        "source_key": "raw/j1/source.jpg",
        "webhook_url": None,
        "steps": "{}",
        "tenant": "anonymous",
        "run": run,
    }
    await Reconciler(res, loop=asyncio.get_running_loop())._act(job, redrives=1)  # type: ignore[arg-type]
    ((sent_to, event),) = res.sent
    assert sent_to == topic
    assert event.data["priority"] == BATCH if priority == BATCH else "priority" not in event.data
    assert data.model_validate(event.data).job_id == "j1"


class Consumer:
    """The worker's consumer as the steering tick sees it: the assignment, the fetcher's
    positions and high-water marks, and the partitions it holds back."""

    def __init__(self, assigned: list[TP]) -> None:
        self.assigned = assigned
        self.marks: dict[TP, tuple[int, int]] = {tp: (0, 0) for tp in assigned}
        self.paused: set[TP] = set()

    def fetch_states(self, topics: Collection[str] | None = None) -> dict[TP, FetchState]:
        return {
            tp: FetchState(*self.marks[tp], tp in self.paused)
            for tp in self.assigned
            if topics is None or tp.topic in topics
        }

    async def hold_fetching(self, tps: list[TP], held: bool) -> None:
        if held:
            self.paused |= set(tps)
        else:
            self.paused -= set(tps)


def _lanes(consumer: Consumer) -> Lanes:
    """Lanes built as the worker builds them, for a worker running `crop`."""
    app = SimpleNamespace(consumer=consumer, rebalancing=False, in_recovery=False)
    return Lanes(
        app,
        lane_topics(SETTINGS, INTERACTIVE, ["crop"]),
        lane_topics(SETTINGS, BATCH, ["crop"]),
        lambda: False,
        loop=asyncio.get_running_loop(),
    )


async def test_an_interactive_request_waiting_pauses_the_batch_requests_and_tasks() -> None:
    names = ("t.jobs", "t.jobs.batch", "t.op.crop", "t.op.crop.batch", "t.events")
    assigned = [TP(t, 0) for t in names]
    consumer = Consumer(assigned)
    lanes = _lanes(consumer)
    await lanes.steer()
    assert consumer.paused == set()
    consumer.marks[TP("t.jobs", 0)] = (4, 5)  # a request on the broker past the position
    await lanes.steer()
    assert consumer.paused == {TP("t.jobs.batch", 0), TP("t.op.crop.batch", 0)}
    consumer.marks[TP("t.jobs", 0)] = (5, 5)
    await lanes.steer()
    assert consumer.paused == set()


async def test_an_interactive_request_in_flight_holds_the_batch_turn() -> None:
    consumer = Consumer([TP("t.jobs.batch", 0), TP("t.op.crop.batch", 1)])
    lanes = _lanes(consumer)
    await lanes.steer()  # idle: the batch turn is open
    order: list[str] = []
    planning = asyncio.Event()
    release = asyncio.Event()

    async def plan(message: Message[Any]) -> None:
        planning.set()
        await release.wait()
        order.append("interactive")

    interactive = lanes.interactive(Route("planner", frozenset(), plan))
    request = asyncio.ensure_future(interactive.handle(cast(Message[Any], None)))
    await planning.wait()
    await lanes.steer()
    assert consumer.paused == {TP("t.jobs.batch", 0), TP("t.op.crop.batch", 1)}

    async def batch() -> None:
        order.append("batch")

    queued = asyncio.create_task(lanes.batch(batch))
    await asyncio.sleep(0.05)
    assert order == []  # waits for its turn
    release.set()
    await request
    await lanes.steer()  # the request is done: the lane is idle again
    await asyncio.wait_for(queued, 5)
    assert order == ["interactive", "batch"]
    assert consumer.paused == set()


async def test_a_steering_tick_that_fails_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A timer that raises crashes the whole worker (mode's Service.crash); a pause refused in
    # the middle of a rebalance must cost one tick, not the worker.
    consumer = Consumer([TP("t.op.crop.batch", 0)])

    async def refused(tps: list[TP], held: bool) -> None:
        raise RuntimeError("partition no longer assigned")

    consumer.hold_fetching = refused  # type: ignore[method-assign]
    lanes = _lanes(consumer)
    await lanes.tick()
    assert "steering the batch lane failed" in caplog.text
