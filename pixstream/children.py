"""Child processes that end with their parent: how `pixstream dev` and the worker supervisor
start, watch and stop what they run, grandchildren included, within a bounded time.

Each Linux mechanism covers one way a process tree gets left behind:
- a process group per child: Ctrl-C at a terminal reaches the supervisor alone, which then
  stops its children in order (SIGTERM, a deadline, SIGKILL) instead of all at once;
- PR_SET_PDEATHSIG: the kernel signals a child when its parent dies, even by SIGKILL (a worker
  when its supervisor goes); a process whose parent is not the one it must end with (a render
  process, child of a forkserver that lives as long as any render process) waits on a pidfd;
- PR_SET_CHILD_SUBREAPER: what a dead child orphans is re-parented to us rather than to init,
  so it is still ours to find and end.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Sequence
from types import FrameType
from typing import Final

import psutil

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1
PR_SET_CHILD_SUBREAPER: Final = 36
#: What a stopped tree gets after the SIGKILL to be reaped.
REAP_SECONDS: Final = 5.0


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere the process groups and the final sweep still apply
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent(signum: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Have the kernel send `signum` to this process when its parent dies. `parent`: the pid
    the parent had before the call; if it is gone already (it died before the call), now."""
    expected = os.getppid() if parent is None else parent
    _prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != expected:
        os.kill(os.getpid(), signum)


def end_with(pid: int) -> None:
    """SIGKILL this process as soon as process `pid` (not our parent) exits: a thread waits on
    its pidfd (or, without pidfd support, looks every second)."""

    def kill_me() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        kill_me()
        return
    except OSError:
        pidfd = None

    def wait() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while psutil.pid_exists(pid):
                time.sleep(1.0)
        kill_me()

    threading.Thread(target=wait, name=f"end-with-{pid}", daemon=True).start()


def become_subreaper() -> None:
    """Orphans of our descendants become our children (not init's) until we exit."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


class Children:
    """The processes one supervisor started: each in a process group of its own, told to end
    with us, watched until a signal or the first exit, and stopped together."""

    def __init__(self) -> None:
        """Also takes over SIGINT and SIGTERM: from now on they only set `signalled`."""
        become_subreaper()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._signalled: int | None = None

        def stop(signum: int, _frame: FrameType | None) -> None:
            self._signalled = signum

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def spawn(self, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """`python -m pixstream *args` in a new process group, SIGTERMed if we die."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixstream", *args],
            env=env,
            process_group=0,
            # Runs in the child between fork and exec; nothing here holds a lock it needs.
            preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, os.getpid()),
        )
        self.procs.append(proc)
        return proc

    def watch(self, interval: float = 0.5) -> subprocess.Popen[bytes] | None:
        """Block until SIGINT or SIGTERM (None) or until a child exits (that child)."""
        while self._signalled is None:
            for proc in self.procs:
                if proc.poll() is not None:
                    return proc
            time.sleep(interval)
        return None

    @property
    def signalled(self) -> int | None:
        return self._signalled

    def stop(self, within: float, *, keep: Collection[int] = ()) -> None:
        """SIGTERM every child, wait up to `within` seconds for them, then SIGKILL whatever is
        still below us (their descendants and the orphans we reaped), except `keep` and its
        descendants (the local stack `pixstream dev` started, which it stops itself)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0f s; killing it",
                    _command(proc),
                    within,
                    extra={"pid": proc.pid},
                )
        kill_descendants(keep=keep)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REAP_SECONDS)


def _command(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
    return "pixstream " + " ".join(str(a) for a in args[3:])


def kill_descendants(*, keep: Collection[int] = ()) -> list[int]:
    """SIGKILL every process below this one except `keep` and what is below those, until none
    is left (one may fork while we look); returns the pids killed."""
    killed: list[int] = []
    for _ in range(5):
        left = [p for p in _below(psutil.Process(), set(keep)) if p.pid not in killed]
        if not left:
            break
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
                killed.append(process.pid)
        psutil.wait_procs(left, timeout=REAP_SECONDS)
    return killed


def _below(root: psutil.Process, keep: set[int]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in root.children():
            if child.pid in keep:
                continue
            found.append(child)
            found += _below(child, keep)
    return found
