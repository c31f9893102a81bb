"""`pixstream dev`: the local default in one command. Starts the stack if it is not up,
applies topics and migrations, runs the ingress and the worker as child processes, prints
the URL once the ingress answers, and on Ctrl-C (or SIGTERM) stops every process it started,
grandchildren included, within a bounded time (see `children`). The stack is stopped too if
this run started it; otherwise it is left running and the exit says how to stop it.

Before anything starts, the ports PixStream serves on are checked: a second `pixstream dev`
names the process that holds them and exits non-zero instead of announcing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Final

import psutil

from pixstream import stack
from pixstream.children import Children
from pixstream.db.migrate import apply_migrations
from pixstream.health import check_all
from pixstream.settings import Settings
from pixstream.stack.base import port_answers
from pixstream.storage import ensure_bucket
from pixstream.topics import apply_topics, load_topics
from pixstream.worker.run import SUPERVISOR_GRACE_SECONDS

log = logging.getLogger(__name__)

# A public demo on a laptop still wants a brake; trusted deployments set their own.
DEV_RATE_LIMIT_PER_MINUTE = "120"
#: How long the ingress may take to answer before the start counts as failed.
START_SECONDS: Final = 60.0
#: How much longer than the worker supervisor's own deadline we wait before SIGKILL.
DEV_GRACE_SECONDS: Final = 5.0
EXIT_PORTS_TAKEN: Final = 3


@dataclass(frozen=True)
class TakenPort:
    what: str
    host: str
    port: int
    holder: str  # "pid 123 (pixstream ingress)" or why it is not known

    def line(self) -> str:
        return f"{self.what} port {self.host}:{self.port} is already in use by {self.holder}"


def run_dev(settings: Settings, processes: int) -> int:
    taken = taken_ports(settings)
    if taken:
        for port in taken:
            print(port.line(), flush=True)
        print(
            "Is PixStream already running? Stop it first (Ctrl-C where it runs), or choose "
            "other ports (PIXSTREAM_HTTP_PORT, PIXSTREAM_WORKER_METRICS_PORT).",
            flush=True,
        )
        return EXIT_PORTS_TAKEN
    started_stack = [s for s in stack.services(settings) if s.pid() is None and not s.ready()]
    for service in stack.services(settings):
        print(service.up().line(), flush=True)
    asyncio.run(_prepare(settings))

    env = {**os.environ}
    env.setdefault("PIXSTREAM_RATE_LIMIT_PER_MINUTE", DEV_RATE_LIMIT_PER_MINUTE)
    children = Children()
    children.spawn(["ingress"], env)
    children.spawn(["worker", "--processes", str(processes)], env)
    code = 0
    if _wait_for_ingress(settings, children):
        print(
            f"\nPixStream is running: http://{settings.http_host}:{settings.http_port}/"
            f"  (API: /v1/jobs, docs: /openapi.json, metrics: /metrics). Ctrl-C stops it.",
            flush=True,
        )
        exited = children.watch()
    else:
        exited = next((p for p in children.procs if p.poll() is not None), None)
        code = 0 if children.signalled is not None else 1
    if exited is not None:
        code = exited.returncode or 1
        log.error("%s exited with %s; stopping", exited.args, exited.returncode)
    print("\nstopping PixStream ...", flush=True)
    keep = {pid for s in stack.services(settings) if (pid := s.pid()) is not None}
    children.stop(
        settings.worker_stop_seconds + SUPERVISOR_GRACE_SECONDS + DEV_GRACE_SECONDS, keep=keep
    )
    print("PixStream stopped (ingress and workers).", flush=True)
    for service in reversed(started_stack):
        service.down()
        print(f"{service.name:<10} stopped", flush=True)
    _say_what_still_runs(settings)
    return code


def _wait_for_ingress(settings: Settings, children: Children) -> bool:
    """Until the ingress answers on its port; False when a child exits (or a signal, or
    START_SECONDS pass) first."""
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if children.signalled is not None or any(p.poll() is not None for p in children.procs):
            return False
        if port_answers(host, settings.http_port, timeout=0.5):
            return True
        time.sleep(0.3)
    log.error(
        "the ingress did not answer on port %d within %.0f s", settings.http_port, START_SECONDS
    )
    return False


def _say_what_still_runs(settings: Settings) -> None:
    running = [s for s in stack.services(settings) if s.ready()]
    if not running:
        return
    names = ", ".join(f"{s.name} ({s.address})" for s in running)
    print(
        f"The local stack is still running: {names}. `make down` (or `pixstream stack down`) "
        f"stops it; its data stays in {settings.home}/.",
        flush=True,
    )


def taken_ports(settings: Settings) -> list[TakenPort]:
    """The ports this run would listen on that something already holds."""
    wanted = [("ingress", settings.http_host, settings.http_port)]
    if settings.admin_port:
        wanted.append(("admin", settings.http_host, settings.admin_port))
    if settings.worker_metrics_port:
        wanted.append(("worker metrics", "127.0.0.1", settings.worker_metrics_port))
    return [
        TakenPort(what, host, port, _holder(port))
        for what, host, port in wanted
        if port and not _bindable(host, port)
    ]


def _bindable(host: str, port: int) -> bool:
    # SO_REUSEADDR as the servers set it: a port left in TIME_WAIT is free, a listener is not.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _holder(port: int) -> str:
    """Who listens on `port`, as far as this user may see."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    break
                with contextlib.suppress(psutil.Error):
                    cmdline = " ".join(psutil.Process(conn.pid).cmdline())
                    return f"pid {conn.pid} ({_short(cmdline)})"
                return f"pid {conn.pid}"
    return "a process this user cannot see"


def _short(cmdline: str, limit: int = 80) -> str:
    if "-m pixstream " in cmdline:
        return "pixstream " + cmdline.split("-m pixstream ", 1)[1]
    return cmdline if len(cmdline) <= limit else cmdline[: limit - 3] + "..."


async def _prepare(settings: Settings) -> None:
    await ensure_bucket(settings)
    for change in await apply_topics(settings.kafka_bootstrap, load_topics(settings)):
        print(change, flush=True)
    for version in await apply_migrations(settings.database_url.get_secret_value()):
        print(f"applied migration {version}", flush=True)
    report = await check_all(settings)
    for name, check in report.checks.items():
        print(f"{name:<10} {'ok' if check.ok else 'FAIL'}  {check.detail}", flush=True)
    if not report.ok:
        raise SystemExit("the local stack is not healthy; see .pixstream/logs/")
