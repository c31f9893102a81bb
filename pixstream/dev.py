"""`pixstream dev`: the local default in one command. Starts the stack if it is not up,
applies topics and migrations, runs the ingress and the worker as child processes, prints
the URL, and on Ctrl-C stops everything it started (the stack too, if it started it)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from pixstream import stack
from pixstream.db.migrate import apply_migrations
from pixstream.health import check_all
from pixstream.settings import Settings
from pixstream.storage import ensure_bucket
from pixstream.topics import apply_topics, load_topics

log = logging.getLogger(__name__)

# A public demo on a laptop still wants a brake; trusted deployments set their own.
DEV_RATE_LIMIT_PER_MINUTE = "120"


def run_dev(settings: Settings, processes: int) -> int:
    started_stack = [s for s in stack.services(settings) if s.pid() is None and not s.ready()]
    for service in stack.services(settings):
        print(service.up().line(), flush=True)
    asyncio.run(_prepare(settings))

    env = {**os.environ}
    env.setdefault("PIXSTREAM_RATE_LIMIT_PER_MINUTE", DEV_RATE_LIMIT_PER_MINUTE)
    children = [
        _spawn(["ingress"], env),
        _spawn(["worker", "--processes", str(processes)], env),
    ]
    print(
        f"\nPixStream is running: http://{settings.http_host}:{settings.http_port}/"
        f"  (API: /v1/jobs, docs: /openapi.json, metrics: /metrics). Ctrl-C stops it.",
        flush=True,
    )
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        exited = [c for c in children if c.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            log.error("%s exited with %s; stopping", exited[0].args, exited[0].returncode)
            break
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    for service in reversed(started_stack):
        service.down()
        print(f"{service.name:<10} stopped", flush=True)
    return code


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


def _spawn(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pixstream", *args], env=env)
