"""`pixstream submit`: a client of the HTTP API. Uploads images with a spec, follows each
job's progress, and downloads the outputs through their presigned URLs."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

TERMINAL = ("completed", "failed")


class SubmitError(Exception):
    """The API refused a request; the message is its problem detail."""


@dataclass(frozen=True)
class Submitted:
    file: Path
    job_id: str


async def submit_files(
    base_url: str,
    files: list[Path],
    spec: dict[str, Any],
    *,
    wait: bool,
    out: Path | None,
    echo: Callable[[str], None],
    poll_seconds: float = 0.5,
    timeout_seconds: float = 600,
) -> int:
    """Submit every file; with `wait`, follow them to the end. Returns the failed count."""
    async with aiohttp.ClientSession(base_url) as http:
        submitted = [await _submit(http, f, spec) for f in files]
        for s in submitted:
            echo(f"{s.file}: job {s.job_id} queued")
        if not wait:
            return 0
        jobs = await asyncio.wait_for(
            asyncio.gather(*(_follow(http, s, echo, poll_seconds) for s in submitted)),
            timeout_seconds,
        )
        failed = 0
        for s, job in zip(submitted, jobs, strict=True):
            if job["status"] != "completed":
                failed += 1
                for err in job.get("errors", []):
                    echo(f"{s.file}: step {err.get('step')}: {err['code']}: {err['message']}")
            elif out is not None:
                await _download(http, job, out / s.job_id, echo)
        return failed


async def _submit(http: aiohttp.ClientSession, file: Path, spec: dict[str, Any]) -> Submitted:
    form = aiohttp.FormData()
    form.add_field("spec", json.dumps(spec), content_type="application/json")
    form.add_field(
        "file",
        await asyncio.to_thread(file.read_bytes),
        filename=file.name,
        content_type=mimetypes.guess_type(file.name)[0] or "application/octet-stream",
    )
    async with http.post("/v1/jobs", data=form) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 202:
            raise SubmitError(f"{file}: {resp.status} {body.get('detail', body)}")
        return Submitted(file, body["job_id"])


async def _follow(
    http: aiohttp.ClientSession, s: Submitted, echo: Callable[[str], None], poll: float
) -> dict[str, Any]:
    last = None
    while True:
        async with http.get(f"/v1/jobs/{s.job_id}") as resp:
            job: dict[str, Any] = await resp.json(content_type=None)
        progress = job.get("progress") or {}
        state = (job["status"], progress.get("steps_done"))
        if state != last:
            echo(
                f"{s.file}: {job['status']} ({progress.get('steps_done', '?')}/"
                f"{progress.get('steps_total', '?')} steps)"
            )
            last = state
        if job["status"] in TERMINAL:
            return job
        await asyncio.sleep(poll)


async def _download(
    http: aiohttp.ClientSession,
    job: dict[str, Any],
    directory: Path,
    echo: Callable[[str], None],
) -> None:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    for step, output in job["outputs"].items():
        target = directory / Path(output["key"]).name
        async with http.get(output["url"]) as resp:
            resp.raise_for_status()
            await asyncio.to_thread(target.write_bytes, await resp.read())
        echo(f"  {step}: {target} ({output['format']} {output['width']}x{output['height']})")
