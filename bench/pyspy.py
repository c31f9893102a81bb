"""py-spy on a running worker process: record its stacks while the benchmark loads it, then
summarise what its event loop (the main thread) does: idle in the selector or busy, and
busy in what (by package and by function, inclusive).

Needs py-spy (`pip install -e '.[dev]'`) and permission to ptrace the worker (root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.sampler import stat_fields, ticks_to_seconds

#: A sample whose innermost frame is the selector's wait: the loop has nothing to run.
_IDLE = re.compile(r"^\S*select \(selectors\.py")
#: asyncio's own frames between the loop and the callback it runs: what is below the last
#: of them is the callback (a task's coroutine, a protocol's data_received, a timer).
_LOOP = re.compile(r"^(BaseEventLoop\.(run_forever|_run_once)|Handle\._run) \(asyncio/")
#: Raw collapsed stacks, per thread, idle ones too, by function (not by line), without
#: pausing the worker at each sample (a little less exact, much less intrusive).
_FLAGS = ("--format", "raw", "--threads", "--idle", "--function", "--nonblocking")
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:)]+)(:\d+)?\)$")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of `pid` has used, from /proc: the ground
    truth the samples' shares are read against. py-spy's `--nonblocking` samples may show a
    thread in the selector while the kernel says it ran: on a reused-job stream (session 11)
    they put the loop at 86% idle when /proc had its thread busy about 60% of the time."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (stat := stat_fields(task / "stat")) is not None:  # None: the thread ended
            _, fields = stat
            found[int(task.name)] = ticks_to_seconds(int(fields[11]) + int(fields[12]))
    return found


class Recording:
    """`py-spy record` of `pid` into `out` (raw collapsed stacks) until stop(), and the CPU
    each of its threads used meanwhile (`cpu`, seconds by thread id)."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if exe is None:
            raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
        self.out = out
        self.pid = pid
        self.cpu: dict[int, float] = {}
        self._cpu_at_start = thread_cpu(pid)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), *_FLAGS, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write what it has."""
        now = thread_cpu(self.pid)
        self.cpu = {tid: now[tid] - self._cpu_at_start.get(tid, 0.0) for tid in now}
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")


@dataclass
class Loop:
    """The main thread's samples."""

    samples: int = 0
    idle: int = 0
    packages: Counter[str] = field(default_factory=Counter)  # busy samples by innermost package
    callbacks: Counter[str] = field(default_factory=Counter)  # busy samples by what the loop ran
    functions: Counter[str] = field(default_factory=Counter)  # busy samples, inclusive
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds by thread, /proc

    def share(self, count: int) -> float:
        return count / self.samples if self.samples else 0.0


def _package(frame: str) -> str:
    """`f (faust/agents/agent.py:698)` -> faust; a stdlib module keeps its name."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    head = match["file"].split("/")[0]
    return head.removesuffix(".py") or match["file"]


_THREAD = re.compile(r"^thread \((?P<tid>\d+)\): (?P<name>.*)$")


def summarise(path: Path, cpu: dict[int, float] | None = None) -> Loop:
    """Read py-spy's raw output (`thread (tid): name;frame;...;frame count` per stack), with
    `cpu` (a Recording's) named by the threads the samples name."""
    loop = Loop()
    names: dict[int, str] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, _, frames_text = stack.partition(";")
        if (named := _THREAD.match(thread)) is not None:
            names[int(named["tid"])] = named["name"]
        if not thread.endswith(": MainThread"):
            continue
        frames, samples = frames_text.split(";"), int(count)
        loop.samples += samples
        if _IDLE.match(frames[-1]):
            loop.idle += samples
            continue
        ran = [i for i, frame in enumerate(frames) if _LOOP.match(frame)]
        inner = frames[ran[-1] + 1 :] if ran else frames
        if not inner:
            loop.packages["asyncio (the loop itself)"] += samples
            loop.callbacks["asyncio (the loop itself)"] += samples
            continue
        loop.packages[_package(inner[-1])] += samples
        loop.callbacks[inner[0]] += samples
        for name in dict.fromkeys(inner):  # inclusive: once per sample however deep
            loop.functions[name] += samples
    for tid, seconds in sorted((cpu or {}).items(), key=lambda t: -t[1]):
        loop.threads[f"{names.get(tid, 'unsampled')} ({tid})"] = seconds
    return loop
