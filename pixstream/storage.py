"""S3 (aiobotocore): the bytes of uploads and outputs, and the bucket's lifecycle rules.

Keys are deterministic (`raw/{job}/source.ext`, `processed/{job}/{step}.ext`), so a retried
write overwrites itself. Errors are split here, once: a missing object is the input's fault
(permanent), anything else from the endpoint is transient.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from pixstream.errors import SourceUnavailable, TransientError
from pixstream.presign import presign_get
from pixstream.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

EXPIRING_PREFIXES = ("raw/", "processed/")
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _client_config() -> AioConfig:
    return AioConfig(
        signature_version="s3v4",  # botocore would otherwise sign SigV2 in us-east-1
        s3={"addressing_style": "path"},
        # A hung endpoint costs one call at most 2 x (3 + 10) s before it is a TransientError
        # and the record is parked: botocore's defaults (3 x 60 s) would hold an agent, and
        # every record behind it on the partition, for minutes per attempt.
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
        max_pool_connections=32,
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
    """The bucket, as PixStream uses it."""

    def __init__(self, client: S3Client, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self.bucket = settings.s3_bucket

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` with its SHA-256 checksum, which the endpoint checks against the bytes
        it received and keeps (`sha256`): what render once reads instead of the object."""
        with _classified(f"put {key}"):
            await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
            )

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with _classified(f"get {key}", missing=key):
            resp = await self._client.get_object(Bucket=self.bucket, Key=key)
            if max_bytes is not None and resp["ContentLength"] > max_bytes:
                raise SourceUnavailable(f"object {key} is larger than {max_bytes} bytes")
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data

    async def copy(self, source_key: str, key: str) -> None:
        """A server-side copy (CopyObject): the bytes never leave the endpoint.
        SourceUnavailable when `source_key` is gone (expired or deleted)."""
        with _classified(f"copy {source_key} to {key}", missing=source_key):
            await self._client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source_key}
            )

    async def sha256(self, key: str) -> str | None:
        """The sha256 (hex) of the object's bytes as the endpoint checked them when they were
        stored (a HEAD: no bytes read); None when it keeps no whole-object SHA-256 (stored
        without one, or in parts). SourceUnavailable when there is no such object."""
        with _classified(f"head {key}", missing=key):
            head = await self._client.head_object(
                Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
        checksum = head.get("ChecksumSHA256")
        if checksum is None or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return base64.b64decode(checksum).hex()

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise TransientError(f"S3 head {key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"S3 head {key} failed: {exc}") from exc
        return True

    def presigned_url(self, key: str, *, now: float | None = None) -> str:
        s = self._settings
        return presign_get(
            endpoint_url=s.s3_endpoint_url,
            bucket=self.bucket,
            key=key,
            region=s.s3_region,
            access_key=s.s3_access_key_id,
            secret_key=s.s3_secret_access_key.get_secret_value(),
            window_seconds=s.presign_window_seconds,
            now=now,
        )

    async def ping(self) -> None:
        await self._client.head_bucket(Bucket=self.bucket)


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    async with s3_client(settings) as client:
        yield Storage(client, settings)


@contextmanager
def _classified(what: str, *, missing: str | None = None) -> Iterator[None]:
    """The endpoint's errors as PixStream's: `missing` (a key) not there is the input's
    fault (SourceUnavailable), anything else is transient."""
    try:
        yield
    except ClientError as exc:
        if missing is not None and _error_code(exc) in _MISSING:
            raise SourceUnavailable(f"object {missing} does not exist") from exc
        raise TransientError(f"S3 {what} failed: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"S3 {what} failed: {exc}") from exc


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
