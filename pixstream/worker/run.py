"""Running the worker: one Faust worker per process, and a supervisor for several.

A worker asked to stop that has not stopped within `worker_stop_seconds` exits anyway: with
Kafka or PostgreSQL gone, Faust's shutdown waits on its consumer for a minute and a
second signal is ignored, which is how a worker once outlived `pixstream dev`.

Metrics of several processes: the supervisor runs its workers in prometheus_client's
multiprocess mode (each writes its samples to files in a directory of the supervisor's) and
serves them all, summed, at `worker_metrics_port`; workers themselves serve none. A
single-process worker serves its own on that port.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, Final

import prometheus_client
from prometheus_client import multiprocess

from pixstream import metrics
from pixstream.children import Children
from pixstream.errors import UnknownOperation
from pixstream.ops import OPERATIONS
from pixstream.settings import Settings

log = logging.getLogger(__name__)

#: The exit status of a worker that gave up on a clean shutdown.
EXIT_UNCLEAN: Final = 70
#: How much longer than a worker's own stop deadline the supervisor waits before SIGKILL.
SUPERVISOR_GRACE_SECONDS: Final = 5.0


def run_worker(settings: Settings, ops: Sequence[str] | None) -> None:
    from faust.worker import Worker

    from pixstream.worker.app import build_app

    unknown = sorted(set(ops or ()) - set(OPERATIONS))
    if unknown:
        raise UnknownOperation(f"--ops: unknown operations {', '.join(unknown)}")
    app = build_app(settings, ops)
    metrics.WORKER_UP.set(1)
    if settings.worker_metrics_port:
        prometheus_client.start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    stop_seconds = settings.worker_stop_seconds

    class BoundedWorker(Worker):
        def _schedule_shutdown(self, signal: Any) -> None:
            # mode's one entry for SIGINT and SIGTERM; it ignores every signal after the first.
            if not self._signal_stop_time:
                _exit_after(stop_seconds)
            super()._schedule_shutdown(signal)

    # Logging is the CLI's: keep Faust (mode) from replacing it or redirecting stdout.
    worker = BoundedWorker(
        app,
        loglevel=logging.getLevelName(logging.getLogger().level),
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()


def _exit_after(seconds: float) -> None:
    """Exit the process in `seconds` unless it has exited by then. A thread, not the event
    loop: a shutdown stuck in a blocking call still ends. The render processes go with us
    (their forkserver sees us gone and exits, and they die with it, see `renderpool`)."""

    def give_up() -> None:
        log.error(
            "the worker did not stop within %.0f s (is Kafka or PostgreSQL unreachable?); "
            "exiting without a clean shutdown",
            seconds,
        )
        logging.shutdown()
        os._exit(EXIT_UNCLEAN)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()


def supervise(settings: Settings, processes: int, argv: Sequence[str]) -> int:
    """Run `processes` single-process workers and serve their metrics; stop them all when
    one exits or on SIGINT/SIGTERM."""
    args = list(argv)
    if "--processes" in args:
        i = args.index("--processes")
        del args[i : i + 2]
    args = [a for a in args if not a.startswith("--processes=")]
    metrics_dir = tempfile.mkdtemp(prefix="pixstream-metrics-")
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        "PIXSTREAM_WORKER_METRICS_PORT": "0",
    }
    children = Children()
    exited = None
    try:
        for _ in range(processes):
            children.spawn(args, env)
        # After the spawns: the server's thread must not exist when a child forks.
        if settings.worker_metrics_port:
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=metrics_dir
            )
            prometheus_client.start_http_server(
                settings.worker_metrics_port, addr="127.0.0.1", registry=registry
            )
        exited = children.watch()
        if exited is not None:
            log.error("worker pid %d exited with %s; stopping", exited.pid, exited.returncode)
        children.stop(settings.worker_stop_seconds + SUPERVISOR_GRACE_SECONDS)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [proc.returncode or 0 for proc in children.procs]
    if exited is not None:
        return exited.returncode or 1
    return max(codes, default=0)
