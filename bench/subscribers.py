"""What N concurrent /events subscribers cost one ingress: its RSS and its connections.

    python -m bench.subscribers [--subscribers 200] [--hold 10]

Starts a real `pixstream ingress` (its own database on the local PostgreSQL, its own topic
prefix, a free loopback port), records one job that stays running, opens `--subscribers`
event streams to it and holds them for `--hold` seconds, then writes the job's remaining
events and checks every stream received them. Prints a markdown table: the ingress's RSS
idle, with the streams open (peak of samples) and per stream, and the PostgreSQL backends it
holds (all, and LISTENing). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import psutil
from pydantic import SecretStr

from pixstream import sse
from pixstream.db.migrate import apply_migrations
from pixstream.settings import Settings
from pixstream.worker.recorder import record
from tests.harness import settings_env
from tests.integration.test_progress import lifecycle

MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ingress(settings: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pixstream", "ingress"],
        env=settings_env(settings, PIXSTREAM_HTTP_HOST="127.0.0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo").read().splitlines():  # noqa: SIM115
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def _backends(admin_dsn: str, database: str) -> tuple[int, int]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE query ILIKE 'LISTEN%') AS listening"
            " FROM pg_stat_activity WHERE datname = $1",
            database,
        )
    finally:
        await conn.close()
    return int(row["total"]), int(row["listening"])


async def _wait_http(url: str, proc: subprocess.Popen[bytes], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the ingress exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/v1/operations") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise SystemExit("the ingress did not answer")


async def _follow(resp: aiohttp.ClientResponse, first: asyncio.Event) -> list[str]:
    parser, ids = sse.Parser(), []
    async for raw in resp.content:
        message = parser.feed(raw.decode().rstrip("\r\n"))
        if message is not None:
            ids.append(message.id)
            first.set()
    return ids


async def run(subscribers: int, hold: float) -> dict[str, Any]:
    base = Settings()
    admin_dsn = base.database_url.get_secret_value()
    database = f"pixstream_bench_{uuid.uuid4().hex[:8]}"
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + database
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f"CREATE DATABASE {database}")
    await conn.close()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={
            "database_url": SecretStr(dsn),
            "topic_prefix": prefix,
            "app_id": prefix,
            "http_port": _free_port(),
            "max_event_subscribers": max(subscribers, base.max_event_subscribers),
        }
    )
    proc = _start_ingress(settings)
    url = f"http://127.0.0.1:{settings.http_port}"
    try:
        await apply_migrations(dsn)
        await _wait_http(url, proc)
        job_id = f"bench-{uuid.uuid4().hex[:8]}"
        first, *rest = lifecycle(job_id)
        db = await asyncpg.connect(dsn)
        await record(db, job_id, first)
        ingress = psutil.Process(proc.pid)
        await asyncio.sleep(1.0)
        idle = ingress.memory_info().rss
        idle_backends = await _backends(admin_dsn, database)

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            firsts = [asyncio.Event() for _ in range(subscribers)]
            streams = [
                await session.get(f"{url}/v1/jobs/{job_id}/events").__aenter__()
                for _ in range(subscribers)
            ]
            tasks = [
                asyncio.create_task(_follow(r, e)) for r, e in zip(streams, firsts, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 60)
            peak = 0
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline:
                peak = max(peak, ingress.memory_info().rss)
                await asyncio.sleep(0.25)
            open_backends = await _backends(admin_dsn, database)
            for event in rest:
                await record(db, job_id, event)
            received = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            for resp in streams:
                resp.release()
        await db.close()
        complete = sum(ids == [first.id] + [e.id for e in rest] for ids in received)
        return {
            "subscribers": subscribers,
            "rss_idle_mb": idle / MB,
            "rss_open_mb": peak / MB,
            "per_stream_kb": (peak - idle) / subscribers / 1024,
            "backends_idle": idle_backends,
            "backends_open": open_backends,
            "complete": complete,
        }
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    r = asyncio.run(run(args.subscribers, args.hold))
    print(f"machine: {os.cpu_count()} cores ({_cpu()}), Python {platform.python_version()}")
    print("| streams | ingress RSS idle | RSS with streams open (peak) | per stream |"
          " PostgreSQL backends idle / open (LISTEN) | streams that got every event |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(
        f"| {r['subscribers']} | {r['rss_idle_mb']:.1f} MB | {r['rss_open_mb']:.1f} MB"
        f" | {r['per_stream_kb']:.1f} KB | {r['backends_idle'][0]} / {r['backends_open'][0]}"
        f" ({r['backends_open'][1]}) | {r['complete']} |"
    )
    if r["complete"] != r["subscribers"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
