"""The benchmark suite's pure parts: its percentiles, ratios and table, the py-spy summary, and
the CPU sampler's accounting."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import pyspy
from bench.report import per_job_ms, quantile, ratio, table
from bench.sampler import Sampler


@pytest.mark.parametrize("q", [0.05, 0.5, 0.95])
def test_quantile_matches_statistics_inclusive(q: float) -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert quantile(values, q) == pytest.approx(cuts[round(q * 100) - 1])


def test_quantile_edges() -> None:
    assert quantile([4.0], 0.95) == 4.0
    assert quantile([1.0, 2.0], 0.0) == 1.0
    assert quantile([1.0, 2.0], 1.0) == 2.0
    assert math.isnan(quantile([], 0.5))


def test_ratio_and_cpu_per_job() -> None:
    assert ratio(6.0, 12.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0))
    assert per_job_ms({"worker": 2.0, "minio": 0.5}, 10) == {"worker": 200.0, "minio": 50.0}
    assert per_job_ms({"worker": 2.0}, 0) == {}


def test_table() -> None:
    text = table(["what", "jobs/s"], [["limit", 13.24], ["pipeline", 6.0], ["none", math.nan]])
    assert text.splitlines() == [
        "| what | jobs/s |",
        "| --- | ---: |",
        "| limit | 13.2 |",
        "| pipeline | 6.00 |",
        "| none | - |",
    ]


def test_pyspy_summary_splits_idle_busy_and_callbacks(tmp_path: Path) -> None:
    loop = (
        "BaseEventLoop.run_forever (asyncio/base_events.py:600);"
        "BaseEventLoop._run_once (asyncio/base_events.py:1870)"
    )
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"thread (1): MainThread;main (x.py:1);{loop};EpollSelector.select (selectors.py:451) 60\n"
        f"thread (1): MainThread;main (x.py:1);{loop};Handle._run (asyncio/events.py:78);"
        "deliver (pixstream/worker/handling.py:90);loads (json/__init__.py:1) 30\n"
        f"thread (1): MainThread;main (x.py:1);{loop};Handle._run (asyncio/events.py:78);"
        "Sender._sender_routine (aiokafka/producer/sender.py:1) 10\n"
        "thread (2): Thread-1;run (threading.py:1);wait (threading.py:2) 99\n"
    )
    summary = pyspy.summarise(raw, {1: 0.5, 2: 0.25, 3: 0.0})
    assert summary.threads == {"MainThread (1)": 0.5, "Thread-1 (2)": 0.25, "unsampled (3)": 0.0}
    assert (summary.samples, summary.idle) == (100, 60)
    assert summary.packages == {"json": 30, "aiokafka": 10}
    assert summary.callbacks["deliver (pixstream/worker/handling.py:90)"] == 30
    assert summary.functions["deliver (pixstream/worker/handling.py:90)"] == 30
    assert "main (x.py:1)" not in summary.functions


def test_thread_cpu_counts_what_each_thread_used() -> None:
    burnt, done = threading.Event(), threading.Event()

    def burn() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        burnt.set()
        done.wait()  # alive, so /proc still lists it

    worker = threading.Thread(target=burn)
    worker.start()
    try:
        assert burnt.wait(10)
        cpu = pyspy.thread_cpu(os.getpid())
    finally:
        done.set()
        worker.join()
    assert worker.native_id is not None
    assert cpu[worker.native_id] >= 0.25  # clock ticks: 10 ms each


def test_a_child_that_ends_between_two_samples_is_counted_in_full() -> None:
    # A render child recycled between two samples: counting only the processes seen alive
    # lost what it used after the last sample (here all of it: it is never seen).
    with Sampler(interval=3600) as sampler:  # no sweep but the marks
        start = sampler.mark()
        burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
        subprocess.run([sys.executable, "-c", burn], check=True)  # ended and reaped by us
        cpu = sampler.cpu(start, sampler.mark())
    assert cpu["bench client"] >= 0.3
