"""Running the worker: one Faust worker per process, and a supervisor for several."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import prometheus_client

from pixstream.errors import UnknownOperation
from pixstream.ops import OPERATIONS
from pixstream.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, ops: Sequence[str] | None) -> None:
    from faust.worker import Worker

    from pixstream.worker.app import build_app

    unknown = sorted(set(ops or ()) - set(OPERATIONS))
    if unknown:
        raise UnknownOperation(f"--ops: unknown operations {', '.join(unknown)}")
    app = build_app(settings, ops)
    if settings.worker_metrics_port:
        prometheus_client.start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    # Logging is the CLI's: keep Faust (mode) from replacing it or redirecting stdout.
    worker = Worker(
        app,
        loglevel=logging.getLevelName(logging.getLogger().level),
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()


def supervise(processes: int, argv: Sequence[str]) -> int:
    """Run `processes` single-process workers; stop them all when one fails or on a signal."""
    args = list(argv)
    if "--processes" in args:
        i = args.index("--processes")
        del args[i : i + 2]
    args = [a for a in args if not a.startswith("--processes=")]
    children = []
    for n in range(processes):
        # Only the first child serves metrics on the configured port.
        env_extra = {} if n == 0 else {"PIXSTREAM_WORKER_METRICS_PORT": "0"}
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "pixstream", *args], env={**os.environ, **env_extra}
            )
        )

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
