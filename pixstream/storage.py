"""S3: the bytes of uploads and outputs, and the bucket's lifecycle rules.

The data path (`Storage`) signs its own requests; administration (creating the bucket,
its lifecycle rules) and the tests' independent reads go through aiobotocore. Keys are
deterministic (`raw/{job}/source.ext`, `processed/{job}/{step}.ext`), so a retried write
overwrites itself. Errors are split here, once: a missing object is the input's fault
(permanent), anything else from the endpoint is transient.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from multidict import CIMultiDictProxy

from pixstream import sigv4
from pixstream.errors import SourceUnavailable, TransientError
from pixstream.presign import presign_get
from pixstream.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

EXPIRING_PREFIXES = ("raw/", "processed/")
_MISSING = {"NoSuchKey", "404", "NotFound"}
_ATTEMPTS = 2
_RETRY_DELAY = 0.1  # seconds; longer outages are the delivery policy's (a parked record)
_RETRIED = {500, 502, 503, 504}
_HASH_OFF_LOOP_BYTES = 1 << 20


def _client_config() -> AioConfig:
    return AioConfig(
        signature_version="s3v4",  # botocore would otherwise sign SigV2 in us-east-1
        s3={"addressing_style": "path"},
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
    )


@asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[S3Client]:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        config=_client_config(),
    ) as client:
        yield client


class Storage:
    """The bucket, as PixStream's data path uses it: requests signed here (`sigv4`), sent
    with aiohttp. Through aiobotocore a HEAD cost 2.4 ms of the loop's CPU and a CopyObject
    3.1 ms (request building, endpoint rules, parsing), this way 0.4 and 0.8 ms; a reused
    job is three such calls and little else."""

    def __init__(self, http: aiohttp.ClientSession, settings: Settings) -> None:
        self._http = http
        self._settings = settings
        self.bucket = settings.s3_bucket
        endpoint = urlsplit(settings.s3_endpoint_url.rstrip("/"))
        self._origin = f"{endpoint.scheme}://{endpoint.netloc}"
        self._host = endpoint.netloc
        self._base_path = endpoint.path
        self._secret = settings.s3_secret_access_key.get_secret_value()

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` with its SHA-256 checksum, which the endpoint checks against the bytes
        it received and keeps (`sha256`): what render once reads instead of the object."""
        digest = await _sha256(data)
        await self._request(
            "PUT",
            key,
            f"put {key}",
            headers={
                "content-type": content_type,
                "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
            },
            body=data,
            payload_sha256=digest.hex(),  # one hash signs the payload and is its checksum
        )

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        _, body = await self._request("GET", key, f"get {key}", missing=key, max_bytes=max_bytes)
        return body

    async def copy(self, source_key: str, key: str) -> None:
        """A server-side copy (CopyObject): the bytes never leave the endpoint.
        SourceUnavailable when `source_key` is gone (expired or deleted)."""
        source = sigv4.object_path("", self.bucket, source_key)
        what = f"copy {source_key} to {key}"
        _, answer = await self._request(
            "PUT",
            key,
            what,
            headers={"x-amz-copy-source": source},
            missing=source_key,
        )
        if b"<Error>" in answer:  # CopyObject may answer 200 and report its failure in the body
            raise TransientError(f"S3 {what} failed: {_describe(200, answer)}")

    async def sha256(self, key: str) -> str | None:
        """The sha256 (hex) of the object's bytes as the endpoint checked them when they were
        stored (a HEAD: no bytes read); None when it keeps no whole-object SHA-256 (stored
        without one, or in parts). SourceUnavailable when there is no such object."""
        head, _ = await self._request(
            "HEAD", key, f"head {key}", headers={"x-amz-checksum-mode": "ENABLED"}, missing=key
        )
        checksum = head.get("x-amz-checksum-sha256")
        if checksum is None or head.get("x-amz-checksum-type", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return base64.b64decode(checksum).hex()

    async def exists(self, key: str) -> bool:
        try:
            await self._request("HEAD", key, f"head {key}", missing=key)
        except SourceUnavailable:
            return False
        return True

    def presigned_url(self, key: str, *, now: float | None = None) -> str:
        s = self._settings
        return presign_get(
            endpoint_url=s.s3_endpoint_url,
            bucket=self.bucket,
            key=key,
            region=s.s3_region,
            access_key=s.s3_access_key_id,
            secret_key=self._secret,
            window_seconds=s.presign_window_seconds,
            now=now,
        )

    async def ping(self) -> None:
        await self._request("HEAD", "", "head bucket")

    async def _request(
        self,
        method: str,
        key: str,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        payload_sha256: str = sigv4.EMPTY_SHA256,
        missing: str | None = None,
        max_bytes: int | None = None,
    ) -> tuple[CIMultiDictProxy[str], bytes]:
        """One signed request, retried once when the endpoint or the connection failed
        transiently (as botocore's standard mode did); the response's headers and body.
        A 404 for `missing` is SourceUnavailable, any other failure TransientError."""
        path = sigv4.object_path(self._base_path, self.bucket, key)
        for attempt in range(1, _ATTEMPTS + 1):
            if attempt > 1:
                await asyncio.sleep(_RETRY_DELAY)
            signed = self._signed(method, path, headers or {}, payload_sha256)
            try:
                async with self._http.request(
                    method, self._origin + path, headers=signed, data=body or None
                ) as resp:
                    if resp.status == 404 and missing is not None:
                        raise SourceUnavailable(f"object {missing} does not exist")
                    if resp.status in _RETRIED and attempt < _ATTEMPTS:
                        continue
                    if max_bytes is not None and (resp.content_length or 0) > max_bytes:
                        raise SourceUnavailable(f"object {key} is larger than {max_bytes} bytes")
                    data = await resp.read()
                    if resp.status >= 300:
                        raise TransientError(f"S3 {what} failed: {_describe(resp.status, data)}")
                    return resp.headers, data
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt < _ATTEMPTS:
                    continue
                raise TransientError(f"S3 {what} failed: {str(exc) or type(exc).__name__}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _signed(
        self, method: str, path: str, headers: dict[str, str], payload_sha256: str
    ) -> dict[str, str]:
        signed = {
            **headers,
            "host": self._host,
            "x-amz-content-sha256": payload_sha256,
            "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        }
        signed["authorization"] = sigv4.authorization(
            method=method,
            path=path,
            headers=signed,
            access_key=self._settings.s3_access_key_id,
            secret_key=self._secret,
            region=self._settings.s3_region,
        )
        return signed


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    # A hung endpoint costs one call at most 2 x (3 + 10) s before it is a TransientError
    # and the record is parked: a longer wait would hold an agent, and every record behind
    # it on the partition, for minutes per attempt.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=10)
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, skip_auto_headers=["User-Agent"]
    ) as http:
        yield Storage(http, settings)


async def _sha256(data: bytes) -> bytes:
    """A 20 MB upload hashes in about 40 ms: off the loop (hashlib lets go of the GIL), where
    it does not hold up every other request; a small output is quicker hashed in place."""
    if len(data) < _HASH_OFF_LOOP_BYTES:
        return hashlib.sha256(data).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())


def _describe(status: int, body: bytes) -> str:
    """The endpoint's error code and message, from its XML error body when it sent one."""
    found = {
        tag: m.group(1).decode(errors="replace")
        for tag in ("Code", "Message")
        if (m := re.search(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), body))
    }
    return f"HTTP {status} {found.get('Code', '')}: {found.get('Message', '')}".strip(" :")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def lifecycle_rules(retention_seconds: int) -> list[dict[str, Any]]:
    """Expire uploads and outputs after the retention; S3 counts expiry in whole days."""
    days = max(1, math.ceil(retention_seconds / 86_400))
    return [
        {
            "ID": f"expire-{prefix.rstrip('/')}",
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "Expiration": {"Days": days},
        }
        for prefix in EXPIRING_PREFIXES
    ]


async def ensure_bucket(settings: Settings) -> None:
    """Create the bucket if missing and set its lifecycle rules (idempotent)."""
    async with s3_client(settings) as client:
        try:
            await client.head_bucket(Bucket=settings.s3_bucket)
        except ClientError as exc:
            if _error_code(exc) not in _MISSING | {"NoSuchBucket"}:
                raise
            await client.create_bucket(Bucket=settings.s3_bucket)
            log.info("created bucket %s", settings.s3_bucket)
        await client.put_bucket_lifecycle_configuration(
            Bucket=settings.s3_bucket,
            LifecycleConfiguration={"Rules": lifecycle_rules(settings.retention_seconds)},  # type: ignore[typeddict-item]
        )
