"""The worker's pure parts: job progress, retry tiers, record headers."""

from __future__ import annotations

import pytest

from pixstream import redelivery as h
from pixstream.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JobFailed,
    JobRequested,
    OutputInfo,
    SourceKey,
    StepCompleted,
    StepFailed,
)
from pixstream.redelivery import TIERS, Record, dead_letter_headers, tier_for, with_headers
from pixstream.spec import StepSpec
from pixstream.worker.progress import JobProgress

pytestmark = pytest.mark.unit

STEPS = [
    StepSpec(id="web", op="resize", params={"width": 1024}),
    StepSpec(id="webp", op="convert", params={"format": "webp"}, input="web"),
    StepSpec(id="thumb", op="thumbnail", params={"size": 256}),
]


def _progress() -> JobProgress:
    return JobProgress.start(
        JobRequested(job_id="j1", steps=STEPS, source=SourceKey(key="raw/j1/source.jpg"))
    )


def _out(step: str) -> OutputInfo:
    return OutputInfo(key=f"processed/j1/{step}.webp", format="webp", width=10, height=10, bytes=5)


def test_progress_knows_the_outputs_and_completes_once() -> None:
    progress = _progress()
    assert progress.outputs == ["webp", "thumb"]
    assert progress.record(StepCompleted(job_id="j1", step="web", op="resize"))
    assert progress.record(
        StepCompleted(job_id="j1", step="webp", op="convert", output=_out("webp"))
    )
    assert not progress.resolved
    assert progress.record(
        StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb"))
    )
    assert progress.resolved
    kind, data = progress.finish("j1", 1.0)
    assert kind == JOB_COMPLETED
    assert set(data.outputs) == {"webp", "thumb"}
    # After the terminal event, anything else is a late duplicate.
    assert not progress.record(
        StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb"))
    )


def test_progress_drops_duplicates_and_fails_with_the_step_errors() -> None:
    progress = _progress()
    done = StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb"))
    assert progress.record(done)
    assert not progress.record(done)
    assert progress.record(
        StepFailed(job_id="j1", step="webp", op="convert", code="corrupt_image", message="bad")
    )
    assert progress.resolved
    kind, data = progress.finish("j1", 1.0)
    assert kind == JOB_FAILED
    assert isinstance(data, JobFailed)
    assert [(e.step, e.code) for e in data.errors] == [("webp", "corrupt_image")]
    assert set(data.outputs) == {"thumb"}


def test_progress_round_trips_through_the_table_json() -> None:
    progress = _progress()
    progress.record(StepCompleted(job_id="j1", step="thumb", op="thumbnail", output=_out("thumb")))
    assert JobProgress.model_validate(progress.to_json()) == progress


def test_retry_tiers_grow_then_stay() -> None:
    assert [tier_for(n).delay_seconds for n in range(1, 7)] == [5, 30, 120, 120, 120, 120]
    assert {t.name for t in TIERS} == {"retry.5s", "retry.30s", "retry.2m"}


def test_origin_survives_retries_and_dead_letter_headers_name_it() -> None:
    first = Record("p.jobs", 3, 41, b"j1", b"v", (("trace", b"abc"),))
    assert first.attempt == 0
    assert first.origin() is first
    parked = Record(
        "p.retry.5s",
        0,
        7,
        b"j1",
        b"v",
        tuple(
            with_headers(
                first.headers,
                pixstream_attempt="2",
                pixstream_origin_topic="p.jobs",
                pixstream_origin_partition="3",
                pixstream_origin_offset="41",
                pixstream_not_before="1.0",
            )
        ),
    )
    assert parked.attempt == 2
    origin = parked.origin()
    assert (origin.topic, origin.partition, origin.offset) == ("p.jobs", 3, 41)
    assert dict(origin.headers) == {"trace": b"abc"}

    headers = dict(dead_letter_headers(origin, ValueError("broken"), attempts=3))
    assert headers[h.DLQ_TOPIC] == b"p.jobs"
    assert headers[h.DLQ_PARTITION] == b"3"
    assert headers[h.DLQ_OFFSET] == b"41"
    assert headers[h.DLQ_ERROR_CLASS] == b"builtins.ValueError"
    assert headers[h.DLQ_ERROR_MESSAGE] == b"broken"
    assert headers[h.DLQ_ATTEMPTS] == b"3"
    assert headers["trace"] == b"abc"


def test_the_table_pruner_deletes_only_old_ended_jobs_of_its_partition() -> None:
    from pixstream.worker.pruning import TablePruner
    from pixstream.worker.reconciler import partition_for

    ended = _progress()
    ended.finish("j1", now=1_000.0)
    running = _progress()
    table = {f"job-{n}": ended.to_json() for n in range(40)}
    table["job-running"] = running.to_json()
    partition = partition_for("job-0", 4)
    pruner = TablePruner(table, partitions=4, older_than=100.0)

    deleted = pruner.after(partition, now=1_050.0)  # ended 50 s ago: kept
    assert deleted == 0
    pruner._last.clear()
    deleted = pruner.after(partition, now=2_000.0)
    mine = {f"job-{n}" for n in range(40) if partition_for(f"job-{n}", 4) == partition}
    assert deleted == len(mine) > 0
    assert not mine & set(table)
    assert "job-running" in table
    assert len(table) == 41 - len(mine)
    assert pruner.after(partition, now=2_001.0) == 0  # at most once a minute per partition
