"""CPU and memory of every process on the machine, read from /proc in a background thread:
CPU seconds per process group between two marks, and the peak RSS of each process.

Groups come from ancestry: the local stack's services (`root()` with their pids: Kafka's JVM,
MinIO, the PostgreSQL postmaster and its backends), the benchmark's own ingress and worker
supervisor, the worker processes below it and their render children below those; without
a local stack, from the command name. Peak RSS is the kernel's high-water mark (VmHWM),
exact where a sampled RSS would miss a render's short peak; sampled RSS is kept too.

A group's CPU at a mark is the sum, over its processes alive then, of their own CPU (utime +
stime) and of what their children that ended used (cutime + cstime, once reaped). A child
that ends between two samples is so counted in full and once (its parent's total takes over
from its own): counting the live processes alone lost the end of every render child that
was recycled, and counted a child first seen after a mark with the CPU it had used before.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")
BY_NAME = {"java": "kafka (JVM)", "kafka": "kafka (JVM)", "minio": "minio", "postgres": "postgres"}
#: Groups whose memory is followed (the others only for CPU).
WATCHED = ("ingress", "worker", "render")


@dataclass
class Proc:
    pid: int
    started: int  # in clock ticks since boot: tells a reused pid from the process it replaced
    group: str
    label: str
    rss: list[tuple[float, int]] = field(default_factory=list)  # (when, RSS kB)
    peak_kb: int = 0


def stat_fields(path: Path) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of a /proc `stat` file, a process's or a
    thread's (`/proc/<pid>/task/<tid>/stat`); None when it is gone. The fields list starts
    at field 3 (state): ppid is [1], utime [11], stime [12], cutime [13], cstime [14],
    starttime [19]."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()


def ticks_to_seconds(ticks: int) -> float:
    return ticks / _TICK


def _stat(pid: int) -> tuple[str, int, float, int] | None:
    """(command name, ppid, CPU seconds of it and its reaped children, start time) from
    /proc/<pid>/stat."""
    found = stat_fields(_PROC / str(pid) / "stat")
    if found is None:
        return None
    name, fields = found
    ticks = sum(int(f) for f in fields[11:15])
    return name, int(fields[1]), ticks_to_seconds(ticks), int(fields[19])


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; zeros for a kernel thread or a process that is gone."""
    rss = hwm = 0
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _below(group: str, depth: int, pid: int) -> tuple[str, str]:
    """(group, label) of a process `depth` levels below a root of `group`."""
    if group in ("worker supervisor", "worker"):
        # supervisor -> `pixstream worker` processes -> forkserver -> render children;
        # `worker --processes 1` is itself the worker.
        level = depth + (group == "worker")
        if level == 0:
            return group, f"worker supervisor {pid}"
        if level == 1:
            return "worker", f"worker process {pid}"
        return "render", f"{'render child' if level > 2 else 'forkserver'} {pid}"
    if group == "bench client" and depth > 0:
        return "limit loop", f"limit loop {pid}"
    return group, f"{group} {pid}"


def _cmdline(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class Sampler:
    """Samples every `interval` s until closed; `mark()` returns a time to measure between."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.roots: dict[int, str] = {os.getpid(): "bench client"}
        self.procs: dict[tuple[int, int], Proc] = {}
        self._marks: dict[float, dict[str, float]] = {}  # CPU seconds by group, at each mark
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def root(self, pid: int, group: str) -> None:
        """`pid` and its descendants belong to `group` (a worker supervisor: see _group)."""
        with self._lock:
            self.roots[pid] = group

    def mark(self) -> float:
        """Sample now and return the time of that sample (a phase boundary)."""
        now, totals = self.sweep()
        with self._lock:
            self._marks[now] = totals
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def sweep(self) -> tuple[float, dict[str, float]]:
        """Read every process once: its time and each group's CPU seconds so far."""
        with self._lock:
            now = time.perf_counter()
            stats = {}
            for entry in _PROC.iterdir():
                if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                    stats[int(entry.name)] = stat
            parents = {pid: stat[1] for pid, stat in stats.items()}
            totals: dict[str, float] = defaultdict(float)
            for pid, (name, _ppid, cpu, started) in stats.items():
                proc = self.procs.get((pid, started))
                if proc is None:
                    group, label = self._group(pid, name, parents)
                    proc = self.procs[(pid, started)] = Proc(pid, started, group, label)
                totals[proc.group] += cpu
                if proc.group in WATCHED:
                    rss, hwm = _memory(pid)
                    if rss:
                        proc.rss.append((now, rss))
                    proc.peak_kb = max(proc.peak_kb, hwm)
            return now, dict(totals)

    def _group(self, pid: int, name: str, parents: dict[int, int]) -> tuple[str, str]:
        chain = [pid]
        while chain[-1] in parents and parents[chain[-1]] > 1 and len(chain) < 20:
            chain.append(parents[chain[-1]])
        for depth, ancestor in enumerate(chain):
            group = self.roots.get(ancestor)
            if group is not None:
                return _below(group, depth, pid)
        if set(self.roots.values()) & set(BY_NAME.values()):
            # The local stack's services are roots: a JVM or a postgres not below them is
            # another stack's (the fault suite's, say), not this benchmark's.
            return "other", f"{name} {pid}"
        if name in BY_NAME:
            return BY_NAME[name], f"{name} {pid}"
        if name.startswith("postgres") or _cmdline(pid).startswith("postgres"):
            return "postgres", f"postgres {pid}"
        return "other", f"{name} {pid}"

    def cpu(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds of each group between two marks."""
        with self._lock:
            before, after = self._marks[start], self._marks[end]
        return {g: after.get(g, 0.0) - before.get(g, 0.0) for g in before.keys() | after.keys()}

    def watched(self) -> Iterator[Proc]:
        with self._lock:
            yield from sorted(
                (p for p in self.procs.values() if p.group in WATCHED and p.peak_kb),
                key=lambda p: (WATCHED.index(p.group), p.pid),
            )
