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
import sys
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.isolated import free_port, isolated, machine_line, start, stop, wait_http
from pixstream import sse
from pixstream.settings import Settings
from pixstream.worker.recorder import record
from tests.integration.test_progress import lifecycle

MB = 1024 * 1024


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


async def _follow(resp: aiohttp.ClientResponse, first: asyncio.Event) -> list[str]:
    parser, ids = sse.Parser(), []
    async for raw in resp.content:
        message = parser.feed(raw.decode().rstrip("\r\n"))
        if message is not None:
            ids.append(message.id)
            first.set()
    return ids


async def run(subscribers: int, hold: float) -> dict[str, Any]:
    admin_dsn = Settings().database_url.get_secret_value()
    max_subscribers = max(subscribers, Settings().max_event_subscribers)
    # No topics applied: the job's events go to the database, which the streams follow.
    async with isolated(
        topics=False,
        http_host="127.0.0.1",
        http_port=free_port(),
        max_event_subscribers=max_subscribers,
    ) as settings:
        dsn, database = settings.database_url.get_secret_value(), settings.topic_prefix
        proc = start(settings, "ingress")
        url = f"http://127.0.0.1:{settings.http_port}"
        try:
            await wait_http(url, proc)
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
        finally:
            await asyncio.to_thread(stop, proc)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    r = asyncio.run(run(args.subscribers, args.hold))
    print(machine_line())
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
