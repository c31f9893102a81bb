"""What every local service shares: a pid file, a log file, a port to wait for."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A local service could not be installed or started."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    answers: bool

    def line(self) -> str:
        state = "up" if self.answers else ("started, not answering" if self.pid else "down")
        pid = f" pid {self.pid}" if self.pid else ""
        return f"{self.name:<10} {self.address:<24} {state}{pid}"


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def run(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
) -> None:
    """Run a setup command to completion; its output goes to the log, failures raise."""
    log.info("running %s", " ".join(cmd))
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    try:
        result = subprocess.run(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    if result.returncode != 0:
        hint = f" (see {log_file})" if log_file else ""
        raise StackError(f"{' '.join(cmd[:3])} ... failed with exit code {result.returncode}{hint}")


class LocalService(ABC):
    """A service the stack starts as a detached process and remembers by pid."""

    name: str
    host = "127.0.0.1"
    port: int

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / self.name
        self.log_file = home / "logs" / f"{self.name}.log"
        self.pid_file = home / "run" / f"{self.name}.pid"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def install(self) -> None:
        """Fetch or build what the service needs; a no-op when already there."""

    @abstractmethod
    def prepare(self) -> None:
        """Create the service's state on first start (format, initdb); idempotent."""

    @abstractmethod
    def spawn(self) -> int:
        """Start the process detached and return its pid."""

    def ready(self) -> bool:
        return port_answers(self.host, self.port)

    def after_start(self) -> None:  # noqa: B027 - optional hook, most services need none
        """Work that needs the service answering (create the database, the bucket)."""

    def stop_process(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)

    # -- shared lifecycle -----------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, self.address, self.pid(), self.ready())

    def up(self, timeout: float = 120.0) -> ServiceStatus:
        for d in (self.dir, self.log_file.parent, self.pid_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        if self.pid() is None:
            if self.ready():
                raise StackError(
                    f"{self.name}: {self.address} is already taken by a process this stack did "
                    "not start; stop it or point PIXSTREAM_* at it instead of `stack up`"
                )
            self.install()
            self.prepare()
            self.pid_file.write_text(str(self.spawn()))
        self._wait_ready(timeout)
        self.after_start()
        return self.status()

    def down(self, timeout: float = 60.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        self.stop_process(pid)
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                log.warning(
                    "%s (pid %d) did not stop in %.0fs; killing it", self.name, pid, timeout
                )
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            pid = self.pid()
            if pid is None:
                raise StackError(f"{self.name} exited during start-up; see {self.log_file}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} did not answer on {self.address} within "
                    f"{timeout:.0f}s; see {self.log_file}"
                )
            time.sleep(0.3)

    def spawn_detached(
        self, cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start a long-running process in its own session so Ctrl-C on us does not reach it."""
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        return proc.pid
