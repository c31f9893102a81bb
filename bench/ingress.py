"""Load POST /v1/jobs of a running ingress: requests/s and latency percentiles.

    python -m bench.ingress [--url http://127.0.0.1:8080] [--clients 16] [--seconds 20]
                            [--upload-bytes 200000]

Each of `--clients` connections submits the same JPEG of about `--upload-bytes` (generated
here) with a three-step spec back to back for `--seconds`; every answer must be a 202. Prints
a markdown table. Run it on loopback only, against an ingress started with its own topic
prefix and database (and `PIXSTREAM_RATE_LIMIT_PER_MINUTE=0`: every client shares one
address) so the jobs do not reach a worker you care about.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
from PIL import Image, ImageFilter

from tests.harness import CONTRACT_SPEC

SPEC = CONTRACT_SPEC


def photo_like_jpeg(target_bytes: int = 200_000) -> bytes:
    """A JPEG of smoothed noise (1600x1200, larger for more than 200 KB), its quality chosen
    to land near `target_bytes`."""
    rng = random.Random(7)
    scale = max(1.0, math.sqrt(target_bytes / 200_000))
    size = (int(1600 * scale), int(1200 * scale))
    small = Image.frombytes("RGB", (200, 150), rng.randbytes(200 * 150 * 3))
    image = small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.SMOOTH)
    best = b""
    for quality in range(95, 10, -5):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        best = buf.getvalue()
        if len(best) <= target_bytes:
            break
    return best


async def client_loop(
    session: aiohttp.ClientSession,
    url: str,
    image: bytes,
    deadline: float,
    latencies: list[float],
    statuses: Counter[int],
) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with session.post(f"{url}/v1/jobs", data=job_form(image)) as resp:
            await resp.read()
            statuses[resp.status] += 1
        latencies.append(time.perf_counter() - started)


async def run(url: str, clients: int, seconds: float, upload_bytes: int = 200_000) -> int:
    image = photo_like_jpeg(upload_bytes)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up: connections, the ingress's pools and the producer's metadata.
        async with session.post(f"{url}/v1/jobs", data=job_form(image)) as resp:
            if resp.status != 202:
                print(f"warm-up request answered {resp.status}: {await resp.text()}")
                return 1
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(
                client_loop(session, url, image, deadline, latencies, statuses)
                for _ in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print("| upload | clients | requests | requests/s | p50 ms | p99 ms | statuses |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(image) / 1000:.0f} KB JPEG | {clients} | {len(latencies)} | "
        f"{len(latencies) / elapsed:.1f} | {cuts[49] * 1000:.1f} | {cuts[98] * 1000:.1f} | "
        f"{dict(sorted(statuses.items()))} |"
    )
    return 0 if set(statuses) == {202} else 1


def job_form(image: bytes, spec: dict[str, Any] = SPEC) -> aiohttp.FormData:
    """The multipart body of POST /v1/jobs: the image and its spec."""
    form = aiohttp.FormData()
    form.add_field("file", image, filename="photo.jpg", content_type="image/jpeg")
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    return form


async def post_job(session: aiohttp.ClientSession, url: str, image: bytes) -> str:
    """Submit one job of the contract's spec; its id (anything but a 202 raises)."""
    async with session.post(f"{url}/v1/jobs", data=job_form(image)) as resp:
        body = await resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/jobs answered {resp.status}: {body[:300]!r}")
        job: str = json.loads(body)["job_id"]
        return job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--upload-bytes", type=int, default=200_000, help="about this size")
    args = parser.parse_args()
    return asyncio.run(run(args.url.rstrip("/"), args.clients, args.seconds, args.upload_bytes))


if __name__ == "__main__":
    sys.exit(main())
