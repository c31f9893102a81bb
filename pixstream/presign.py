"""SigV4 presigned S3 GET URLs signed at the start of a time window.

botocore signs with the current clock, so every read would get a new URL and browsers could
never cache an output. Signing at the window's start instead gives one URL per window; its
expiry covers the rest of the window plus a full `min_validity`, so every read gets at least
that long. Pure: no network, no clock unless none is given.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from pixstream import sigv4

MAX_EXPIRES = 7 * 24 * 3600  # SigV4's limit


def window_start(now: float, window_seconds: int) -> int:
    return int(now // window_seconds * window_seconds)


def presign_get(
    *,
    endpoint_url: str,
    bucket: str,
    key: str,
    region: str,
    access_key: str,
    secret_key: str,
    window_seconds: int,
    min_validity: int = 3600,
    now: float | None = None,
) -> str:
    """A path-style presigned GET valid for at least `min_validity` seconds from `now`."""
    signed_at = window_start(time.time() if now is None else now, window_seconds)
    expires = min(window_seconds + min_validity, MAX_EXPIRES)
    amz_date = datetime.fromtimestamp(signed_at, UTC).strftime("%Y%m%dT%H%M%SZ")

    url = urlsplit(endpoint_url.rstrip("/"))
    path = sigv4.object_path(url.path, bucket, key)
    query = "&".join(
        f"{k}={quote(v, safe='~')}"
        for k, v in sorted(
            {
                "X-Amz-Algorithm": sigv4.ALGORITHM,
                "X-Amz-Credential": f"{access_key}/{sigv4.scope(amz_date, region)}",
                "X-Amz-Date": amz_date,
                "X-Amz-Expires": str(expires),
                "X-Amz-SignedHeaders": "host",
            }.items()
        )
    )
    canonical = f"GET\n{path}\n{query}\nhost:{url.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    signature = sigv4.signature(secret_key, region, amz_date, canonical)
    return f"{url.scheme}://{url.netloc}{path}?{query}&X-Amz-Signature={signature}"
