"""What the ingress lets in: a bounded number of submissions at once, and only uploads whose
headers and planned step sizes are within the pixel budget.

Both exist so that hostile traffic costs little: a submission past the cap waits briefly, then
is answered 503 (nothing read), and an exploding spec is a 422 computed from headers alone.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from pixstream import errors
from pixstream.ops import codec
from pixstream.plan import Plan
from pixstream.spec import JobSpec

#: How long a submission waits for an upload slot before a 503, and the Retry-After sent.
SLOT_WAIT_SECONDS: Final = 2.0
BUSY_RETRY_AFTER: Final = 1


def check_upload(data: bytes, spec: JobSpec, *, max_pixels: int, max_frames: int) -> codec.Probe:
    """The upload's probe, once its frames, pixels and every step's output fit the limits.

    CPU-bound for large GIFs and TIFFs (their frame descriptors are walked): run it in a thread.
    """
    probed = codec.probe(data)
    if probed.frames > max_frames:
        raise errors.TooManyFrames(
            f"the image has {probed.frames} frames; the limit is {max_frames}"
        )
    if probed.pixels > max_pixels:
        raise errors.TooManyPixels(
            f"the image's {probed.frames} frame(s) add up to {probed.pixels} pixels; "
            f"the limit is {max_pixels}"
        )
    plan = Plan.from_spec(spec)
    plan.check_budget((probed.width, probed.height), frames=probed.frames, max_pixels=max_pixels)
    return probed


class UploadSlots:
    """At most `limit` submissions in flight, each holding up to about twice the upload limit
    in memory. One more waits up to `wait` seconds for a slot (its body unread, so it holds
    only what the socket buffers), then is refused: bursts pass, a flood is answered 503."""

    def __init__(self, limit: int, wait: float = SLOT_WAIT_SECONDS) -> None:
        self.limit = limit
        self.wait = wait
        self._free = asyncio.Semaphore(limit)

    async def acquire(self) -> bool:
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait)
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._free.release()


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)


@web.middleware
async def upload_slots_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a slot for POST /v1/jobs before its body is read; 503 + Retry-After when none."""
    if request.match_info.route.name != "post_job":
        return await handler(request)
    slots = request.app[UPLOAD_SLOTS]
    if not await slots.acquire():
        raise web.HTTPServiceUnavailable(
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
            text=f"{slots.limit} uploads are already in flight; retry shortly",
        )
    try:
        return await handler(request)
    finally:
        slots.release()
