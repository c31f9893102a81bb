"""Render in child processes, so a decompression bomb that slips past the budgets ends a child,
never the worker, and the task gets an answer (`worker_crashed`) instead of a crash loop.

Each slot is a one-process executor with its own address-space limit (RLIMIT_AS) and a wall
time limit per call (past it the process is killed: `render_timeout`), replaced when its
process dies and recycled after `tasks_per_child` renders. One process per slot, not one
shared pool: a dead child breaks every future of its executor, and with a shared pool the
tasks that happened to run next to the bomb would fail with it.

A render reports each step as it finishes (`render(..., on_step=...)`) through its slot's
pipe, made with the slot and handed to every child the slot starts: a slot runs one call at a
time, so what arrives on its pipe is that call's. A child that dies may leave half a message
in it, so a slot that loses its child gets a new pipe too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import struct
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final, TypeVar

from pixstream import children, errors
from pixstream.plan import Plan
from pixstream.render import Rendered, StepResult, render
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
#: A message on a slot's pipe: its length (8 bytes, big-endian), then its pickle.
_HEADER: Final = struct.Struct("!Q")

OnStep = Callable[[StepResult], Awaitable[None]]


class _Slot:
    """One render slot: its executor (one child at a time) and the pipe its children write
    step results to. The read end is opened on the event loop at the first render that
    reports (`reader`); the write end stays open here, for the children a recycled executor
    starts later."""

    def __init__(self, executor: ProcessPoolExecutor, inbox: Connection, outbox: Connection):
        self.executor = executor
        self.inbox = inbox
        self.outbox = outbox
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None

    async def reader(self) -> asyncio.StreamReader:
        if self._reader is None:
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            protocol = asyncio.StreamReaderProtocol(reader)
            self._transport, _ = await loop.connect_read_pipe(lambda: protocol, self.inbox)
            self._reader = reader
        return self._reader

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # closes `inbox` too
        else:
            self.inbox.close()
        self.outbox.close()


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
        self._free: asyncio.Queue[_Slot] | None = None
        self._all: set[_Slot] = set()

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
            self._free.put_nowait(self._slot())
        await asyncio.gather(*(self.call(os.getpid) for _ in range(self.processes)))

    async def close(self) -> None:
        """Stop the children (a render in progress is waited for)."""
        slots, self._all, self._free = list(self._all), set(), None
        await asyncio.gather(*(asyncio.to_thread(s.executor.shutdown, wait=True) for s in slots))
        for slot in slots:
            slot.close()

    async def render(
        self,
        source: bytes,
        steps: Sequence[StepSpec],
        *,
        max_pixels: int,
        max_frames: int,
        on_step: OnStep | None = None,
    ) -> Rendered:
        """render() in a child; the plan is rebuilt there from `steps` (a Plan cannot be pickled).

        With `on_step`, each step's result is awaited with it as soon as the step is done,
        one at a time and in plan order, while the child goes on with the next step; the
        outputs' bytes then travel only that way (the Rendered returned has no `outputs`).
        What arrived whole before the child died or timed out is handled too. An error
        `on_step` raises is raised once the render is over (the handler is not called again).

        Raises what render() raises (PixStream errors cross the process boundary as
        themselves), RendererCrashed when the child dies or runs out of memory, and
        RenderTimedOut when it takes longer than `timeout_seconds`.
        """
        if on_step is None:
            return await self.call(_render, source, list(steps), max_pixels, max_frames)
        return await self._call(
            _render_reporting, (source, list(steps), max_pixels, max_frames), on_step
        )

    async def call(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run a picklable `fn(*args)` in a child, with the crash handling of render()."""
        return await self._call(fn, args, None)

    async def _call(
        self, fn: Callable[..., T], args: Sequence[object], on_step: OnStep | None
    ) -> T:
        if self._free is None:
            raise RuntimeError("the render pool is not started")
        free = self._free
        slot = await free.get()
        relay: _Relay | None = None
        try:
            if on_step is not None:
                relay = _Relay(await slot.reader(), on_step)
            running = asyncio.get_running_loop().run_in_executor(slot.executor, fn, *args)
            try:
                result = await asyncio.wait_for(running, self.timeout_seconds)
            except (TimeoutError, BrokenProcessPool, MemoryError) as exc:
                slot, lost = self._lost(slot, exc)
                if relay is not None:
                    await relay.abandon()
                raise lost from exc
            except Exception as exc:
                if relay is not None:
                    slot = await self._raised(slot, relay, exc)
                raise
            handler_error = await relay.finish() if relay is not None else None
        except asyncio.CancelledError:
            if relay is not None:  # the child would go on writing to a pipe nobody reads
                relay.cancel()
                _kill_children(slot.executor)
                slot = self._replace(slot)
            raise
        finally:
            free.put_nowait(slot)
        if handler_error is not None:
            raise handler_error
        return result

    async def _raised(self, slot: _Slot, relay: _Relay, exc: Exception) -> _Slot:
        """The slot after its child raised `exc` (the call's answer) while reporting."""
        if isinstance(exc, errors.PixStreamError):  # raised by render(): after the end
            await relay.finish()
            return slot
        # A bug: whether the child wrote its end is unknown, so its pipe cannot be trusted.
        slot = self._replace(slot)
        await relay.abandon()
        return slot

    def _lost(self, slot: _Slot, exc: BaseException) -> tuple[_Slot, errors.PermanentError]:
        """The slot that replaces `slot`, whose child timed out, died or ran out of memory,
        and the error that answers the call."""
        if isinstance(exc, TimeoutError):
            # A future of a process pool cannot be cancelled once running: only killing the
            # child frees its core (and the executor, which then counts as broken).
            _kill_children(slot.executor)
            return self._replace(slot), errors.RenderTimedOut(
                f"the render took longer than {self.timeout_seconds:g} s and was stopped"
            )
        if isinstance(exc, MemoryError):  # its heap may be left fragmented: start afresh
            return self._replace(slot), errors.RendererCrashed(
                f"the render ran out of memory (the limit is {self.memory_limit_bytes} bytes)"
            )
        return self._replace(slot), errors.RendererCrashed(
            "the render process died (killed, or past its memory limit of "
            f"{self.memory_limit_bytes} bytes)"
        )

    def _slot(self) -> _Slot:
        inbox, outbox = self._context.Pipe(duplex=False)
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_start_child,
            initargs=(self.memory_limit_bytes, os.getpid(), outbox),
            max_tasks_per_child=self.tasks_per_child,
        )
        slot = _Slot(executor, inbox, outbox)
        self._all.add(slot)
        return slot

    def _replace(self, broken: _Slot) -> _Slot:
        log.warning("render process lost; starting a new one")
        self._all.discard(broken)
        broken.executor.shutdown(wait=False, cancel_futures=True)
        broken.close()
        return self._slot()


class _Relay:
    """Hands one call's step results to its handler: read as they arrive (a slow handler
    never holds up the child's writes), handled one at a time in order. The handler's first
    error stops the handling (what follows is read and dropped) and is returned at the end."""

    def __init__(self, reader: asyncio.StreamReader, on_step: OnStep) -> None:
        self._queue: asyncio.Queue[StepResult | None] = asyncio.Queue()
        self._error: Exception | None = None
        self._receiving = asyncio.create_task(self._receive(reader))
        self._handling = asyncio.create_task(self._handle(on_step))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while (result := await _read_message(reader)) is not None:
                self._queue.put_nowait(result)
        finally:
            self._queue.put_nowait(None)

    async def _handle(self, on_step: OnStep) -> None:
        while (result := await self._queue.get()) is not None:
            if self._error is None:
                try:
                    await on_step(result)
                except Exception as exc:
                    self._error = exc

    async def finish(self) -> Exception | None:
        """The child answered, so its end is written: handle all it sent; the handler's
        error, if any."""
        await self._receiving
        await self._handling
        return self._error

    async def abandon(self) -> None:
        """The child is gone: handle what arrived whole, drop the rest (a half-written
        message goes with the slot's pipe)."""
        self._receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.IncompleteReadError):
            await self._receiving
        await self._handling

    def cancel(self) -> None:
        self._receiving.cancel()
        self._handling.cancel()


async def _read_message(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _kill_children(executor: ProcessPoolExecutor) -> None:
    # `_processes` is the executor's own table of its children (no public API names them).
    # SIGKILL: the child holds nothing that needs cleaning up, and the executor is discarded.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(ProcessLookupError, ValueError):
            process.kill()


#: In a child: the write end of its slot's pipe.
_outbox: Connection | None = None


def _start_child(limit: int, worker: int, outbox: Connection) -> None:
    # The child ends the moment its worker does (even SIGKILLed), idle or mid-render: its
    # parent is the forkserver, which outlives the worker while any child holds it open, so
    # the child watches the worker itself. SIGINT (Ctrl-C reaches a terminal's whole group)
    # is the worker's to handle.
    global _outbox
    _outbox = outbox
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


def _render(
    source: bytes,
    steps: list[StepSpec],
    max_pixels: int,
    max_frames: int,
    on_step: Callable[[StepResult], None] | None = None,
) -> Rendered:
    plan = Plan.from_spec(JobSpec(steps=steps))
    return render(source, plan, max_pixels=max_pixels, max_frames=max_frames, on_step=on_step)


def _render_reporting(
    source: bytes, steps: list[StepSpec], max_pixels: int, max_frames: int
) -> Rendered:
    """In a child: render, sending each step's result down the slot's pipe as it is done,
    and an end (None) however the render ends, so the parent knows the call's last message."""
    try:
        rendered = _render(source, steps, max_pixels, max_frames, on_step=_send)
    finally:
        _send(None)
    return dataclasses.replace(rendered, outputs={})  # their bytes went down the pipe


def _send(message: StepResult | None) -> None:
    assert _outbox is not None, "not in a render child"
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    fd = _outbox.fileno()
    for part in (_HEADER.pack(len(payload)), payload):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]
