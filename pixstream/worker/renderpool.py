"""Render in child processes, so a decompression bomb that slips past the budgets ends a child,
never the worker, and the task gets an answer (`worker_crashed`) instead of a crash loop.

Each slot is a one-process executor with its own address-space limit (RLIMIT_AS) and a wall
time limit per call (past it the process is killed: `render_timeout`), replaced when its
process dies and recycled after `tasks_per_child` renders. One process per slot, not one
shared pool: a dead child breaks every future of its executor, and with a shared pool the
tasks that happened to run next to the bomb would fail with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Final, TypeVar

from pixstream import children, errors
from pixstream.plan import Plan
from pixstream.render import Rendered, render
from pixstream.settings import Settings
from pixstream.spec import JobSpec, StepSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS: Final = 120.0
#: Renders per child before it is replaced: bounds what fragmentation or a leak can accumulate.
DEFAULT_TASKS_PER_CHILD: Final = 50
#: forkserver: children fork from a clean, small server process (not from the worker with its
#: threads and sockets) and start in milliseconds, with Pillow already imported.
DEFAULT_CONTEXT: Final = "forkserver"
_PRELOAD: Final = ["pixstream.render"]


class RenderPool:
    """`processes` render slots, each a child process limited to `memory_limit_bytes`."""

    def __init__(
        self,
        *,
        processes: int,
        memory_limit_bytes: int,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        tasks_per_child: int = DEFAULT_TASKS_PER_CHILD,
        mp_context: str = DEFAULT_CONTEXT,
    ) -> None:
        self.processes = processes
        self.memory_limit_bytes = memory_limit_bytes
        self.timeout_seconds = timeout_seconds
        self.tasks_per_child = tasks_per_child
        self._context = multiprocessing.get_context(mp_context)
        if mp_context == "forkserver":
            self._context.set_forkserver_preload(_PRELOAD)
        self._free: asyncio.Queue[ProcessPoolExecutor] | None = None
        self._all: set[ProcessPoolExecutor] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderPool:
        """One slot per worker thread (per core when `worker_threads` is 0)."""
        return cls(
            processes=settings.worker_threads or os.cpu_count() or 1,
            memory_limit_bytes=settings.render_memory_limit_bytes,
            timeout_seconds=settings.render_timeout_seconds,
        )

    async def __aenter__(self) -> RenderPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every child now, so the first tasks do not pay for it."""
        self._free = asyncio.Queue()
        for _ in range(self.processes):
            self._free.put_nowait(self._executor())
        await asyncio.gather(*(self.call(os.getpid) for _ in range(self.processes)))

    async def close(self) -> None:
        """Stop the children (a render in progress is waited for)."""
        executors, self._all, self._free = list(self._all), set(), None
        await asyncio.gather(*(asyncio.to_thread(e.shutdown, wait=True) for e in executors))

    async def render(
        self, source: bytes, steps: Sequence[StepSpec], *, max_pixels: int, max_frames: int
    ) -> Rendered:
        """render() in a child; the plan is rebuilt there from `steps` (a Plan cannot be pickled).

        Raises what render() raises (PixStream errors cross the process boundary as
        themselves), RendererCrashed when the child dies or runs out of memory, and
        RenderTimedOut when it takes longer than `timeout_seconds`.
        """
        return await self.call(_render, source, list(steps), max_pixels, max_frames)

    async def call(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run a picklable `fn(*args)` in a child, with the crash handling of render()."""
        if self._free is None:
            raise RuntimeError("the render pool is not started")
        free = self._free
        executor = await free.get()
        try:
            running = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            return await asyncio.wait_for(running, self.timeout_seconds)
        except TimeoutError as exc:
            # A future of a process pool cannot be cancelled once running: only killing the
            # child frees its core (and the executor, which then counts as broken).
            _kill_children(executor)
            executor = self._replace(executor)
            raise errors.RenderTimedOut(
                f"the render took longer than {self.timeout_seconds:g} s and was stopped"
            ) from exc
        except BrokenProcessPool as exc:
            executor = self._replace(executor)
            raise errors.RendererCrashed(
                "the render process died (killed, or past its memory limit of "
                f"{self.memory_limit_bytes} bytes)"
            ) from exc
        except MemoryError as exc:
            executor = self._replace(executor)  # its heap may be left fragmented: start afresh
            raise errors.RendererCrashed(
                f"the render ran out of memory (the limit is {self.memory_limit_bytes} bytes)"
            ) from exc
        finally:
            free.put_nowait(executor)

    def _executor(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_start_child,
            initargs=(self.memory_limit_bytes, os.getpid()),
            max_tasks_per_child=self.tasks_per_child,
        )
        self._all.add(executor)
        return executor

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        log.warning("render process lost; starting a new one")
        self._all.discard(broken)
        broken.shutdown(wait=False, cancel_futures=True)
        return self._executor()


def _kill_children(executor: ProcessPoolExecutor) -> None:
    # `_processes` is the executor's own table of its children (no public API names them).
    # SIGKILL: the child holds nothing that needs cleaning up, and the executor is discarded.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(ProcessLookupError, ValueError):
            process.kill()


def _start_child(limit: int, worker: int) -> None:
    # The child ends the moment its worker does (even SIGKILLed), idle or mid-render: its
    # parent is the forkserver, which outlives the worker while any child holds it open, so
    # the child watches the worker itself. SIGINT (Ctrl-C reaches a terminal's whole group)
    # is the worker's to handle.
    children.end_with(worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_address_space(limit)


def _limit_address_space(limit: int) -> None:
    # Address space rather than RSS: the kernel enforces it at allocation, so Pillow gets
    # NULL from malloc and raises MemoryError instead of the OOM killer choosing a victim.
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _render(source: bytes, steps: list[StepSpec], max_pixels: int, max_frames: int) -> Rendered:
    plan = Plan.from_spec(JobSpec(steps=steps))
    return render(source, plan, max_pixels=max_pixels, max_frames=max_frames)
