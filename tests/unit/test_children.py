"""Process lifetimes without services: a render process dies with its SIGKILLed worker, and a
repeated warning is let through once per interval."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from pixstream.logs import RepeatLimiter

pytestmark = pytest.mark.unit

#: A worker stand-in: a render pool whose one child sleeps in a call, its pid printed.
WORKER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pixstream.worker.renderpool import RenderPool

    async def main():
        async with RenderPool(processes=1, memory_limit_bytes=2_000_000_000) as pool:
            child = await pool.call(os.getpid)
            print(child, flush=True)
            await pool.call(time.sleep, 120)

    asyncio.run(main())
    """
)


def test_a_render_process_dies_with_its_sigkilled_worker() -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        child = psutil.Process(int(worker.stdout.readline()))
        forkserver = child.parent()
        assert forkserver is not None
        time.sleep(0.5)  # the child is in its 120 s call now
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        _gone, alive = psutil.wait_procs([child], timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    for process in alive:
        process.kill()
    assert alive == [], "the render process outlived its worker"
    assert not forkserver.is_running() or forkserver.status() == psutil.STATUS_ZOMBIE


def _record(msg: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("x",), None)


def test_a_repeated_warning_passes_once_per_interval_with_the_count_held_back() -> None:
    now = [0.0]
    limiter = RepeatLimiter(interval=10.0, clock=lambda: now[0])
    assert limiter.filter(_record("Unable connect to node %s"))
    held = [limiter.filter(_record("Unable connect to node %s")) for _ in range(70)]
    assert not any(held)
    assert limiter.filter(_record("another message %s"))  # another call site
    now[0] = 10.0
    again = _record("Unable connect to node %s")
    assert limiter.filter(again)
    assert again.repeated == 70  # type: ignore[attr-defined]
    now[0] = 25.0
    quiet = _record("Unable connect to node %s")
    assert limiter.filter(quiet)
    assert not hasattr(quiet, "repeated")  # nothing was held back since


def test_info_lines_are_never_held_back() -> None:
    limiter = RepeatLimiter(interval=10.0, clock=lambda: 0.0)
    assert all(limiter.filter(_record("task done in %s", logging.INFO)) for _ in range(50))


def test_the_parent_death_signal_reaches_a_child_of_a_sigkilled_parent() -> None:
    # The parent starts a child that asks for SIGKILL on its parent's death, then sleeps.
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; from pixstream.children import die_with_parent; "
            "die_with_parent(signal.SIGKILL); print('ready', flush=True); time.sleep(120)"],
            stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    _gone, alive = psutil.wait_procs([child], timeout=30)
    for process in alive:
        process.kill()
    assert alive == []
