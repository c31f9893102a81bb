"""What the ingress lets in: a bounded number of submissions at once, and only uploads whose
headers and planned step sizes are within the pixel budget.

Both exist so that hostile traffic costs little: a submission past the cap is answered 503 at
once (nothing read), and an exploding spec is a 422 computed from headers, never from pixels.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from pixstream import errors
from pixstream.ops import codec
from pixstream.plan import Plan
from pixstream.spec import JobSpec

#: Seconds a client is asked to wait when every upload slot is taken; uploads are short.
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
    in memory; the next one is refused at once rather than queued (a queue holds memory too)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0  # only touched on the event loop: no lock needed

    def try_acquire(self) -> bool:
        if self.busy >= self.limit:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)


@web.middleware
async def upload_slots_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a slot for POST /v1/jobs before its body is read; 503 + Retry-After when none."""
    if request.match_info.route.name != "post_job":
        return await handler(request)
    slots = request.app[UPLOAD_SLOTS]
    if not slots.try_acquire():
        raise web.HTTPServiceUnavailable(
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
            text=f"{slots.limit} uploads are already in flight; retry shortly",
        )
    try:
        return await handler(request)
    finally:
        slots.release()
