"""Fetching a job's `source.url` into the bucket: https only, size-limited, time-limited,
and through the SSRF guard (checked at connect time, redirects never followed)."""

from __future__ import annotations

import aiohttp

from pixstream import errors, netguard
from pixstream.ops.codec import sniff_format
from pixstream.plan import Plan

CHUNK = 64 * 1024


async def fetch_source(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, allow_private: bool
) -> tuple[bytes, str]:
    """The image at `url` and its sniffed format; permanent errors for the input's faults,
    transient ones for the remote being unwell (timeouts, 5xx, 429)."""
    try:
        async with netguard.guarded_request(
            session, "GET", url, allow_private=allow_private
        ) as resp:
            if resp.status in (429,) or resp.status >= 500:
                raise errors.TransientError(f"source {url} answered {resp.status}")
            if resp.status != 200:
                raise errors.SourceUnavailable(f"source {url} answered {resp.status}")
            if (resp.content_length or 0) > max_bytes:
                raise errors.TooLarge(f"source {url} is larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise errors.TooLarge(f"source {url} is larger than {max_bytes} bytes")
    except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise errors.TransientError(f"source {url}: {type(exc).__name__} {exc}") from exc
    except aiohttp.InvalidURL as exc:
        raise errors.SourceUnavailable(f"source URL {url} is not valid") from exc
    fmt = sniff_format(bytes(data[:64]))
    if fmt is None:
        raise errors.UnsupportedFormat(f"source {url} is not an image in an allowed format")
    return bytes(data), fmt


def source_key(job_id: str, fmt: str) -> str:
    return Plan.raw_key(job_id, fmt)
