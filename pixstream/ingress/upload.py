"""Reading a job submission: the multipart `file` and `spec` parts, streamed and bounded.

The file part is read chunk by chunk and refused as soon as it passes the limit, so a request
never holds more than `max_bytes` bytes of it; its real format is sniffed from its first
bytes (the file name and the declared content type are not trusted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from pixstream import errors
from pixstream.ingress.problems import BadRequest
from pixstream.ops.codec import sniff_format
from pixstream.spec import loads as load_spec

CHUNK: Final = 64 * 1024
#: aiohttp's multipart reader needs every read to cover at least the boundary.
MIN_READ: Final = 1024
#: The spec is small JSON; a larger part is a mistake or an attack.
MAX_SPEC_BYTES: Final = 64 * 1024
#: Room for the multipart framing and headers around the two parts.
FRAMING_BYTES: Final = 16 * 1024
#: Enough to recognise every allowed format (AVIF and HEIF need their ftyp box's brands).
SNIFF_BYTES: Final = 64

CONTENT_TYPES: Final = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "heif": "image/heif",
}


@dataclass(frozen=True)
class Upload:
    """A submission as received: the image bytes, their sniffed format and the raw spec."""

    data: bytes
    format: str
    spec: Any

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def max_request_bytes(max_upload_bytes: int) -> int:
    """The largest request body a submission within the limits can have."""
    return max_upload_bytes + MAX_SPEC_BYTES + FRAMING_BYTES


async def read_upload(request: web.Request, *, max_bytes: int) -> Upload:
    """The `file` and `spec` parts of a multipart request, in either order.

    BadRequest for a malformed or incomplete request, TooLarge past `max_bytes`,
    UnsupportedFormat for anything but an allowed image, InvalidSpec for a non-JSON spec.
    """
    if request.content_length is not None and request.content_length > max_request_bytes(max_bytes):
        raise errors.TooLarge(
            f"the request body is {request.content_length} bytes; "
            f"the upload limit is {max_bytes} bytes"
        )
    if request.content_type != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data body with 'file' and 'spec' parts, "
            f"got {request.content_type or 'no content type'}"
        )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:  # aiohttp's complaint about the boundary
        raise BadRequest(f"malformed multipart body: {_one_line(exc)}") from exc
    file: tuple[bytes, str] | None = None
    spec: Any = None
    spec_seen = False
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart parts are not accepted")
            if part.name == "file" and file is None:
                file = await _read_file(part, max_bytes)
            elif part.name == "spec" and not spec_seen:
                spec, spec_seen = await _read_spec(part), True
            elif part.name in {"file", "spec"}:
                raise BadRequest(f"the part '{part.name}' appears more than once")
            else:
                raise BadRequest(f"unexpected part {part.name!r}; send only 'file' and 'spec'")
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        # How aiohttp's multipart parser reports bad framing and bad part headers.
        raise BadRequest(f"malformed multipart body: {_one_line(exc)}") from exc
    if file is None:
        raise BadRequest("the 'file' part (the image) is missing")
    if not spec_seen:
        raise BadRequest("the 'spec' part (the job spec JSON) is missing")
    data, fmt = file
    return Upload(data=data, format=fmt, spec=spec)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, HttpProcessingError):
        return " ".join(exc.message.split())
    return " ".join(str(exc).split()) or type(exc).__name__


async def _read_file(part: BodyPartReader, max_bytes: int) -> tuple[bytes, str]:
    buf = bytearray()
    fmt: str | None = None
    while True:
        # Ask for little more than what is left under the limit (aiohttp needs room for the
        # boundary); a chunk that would pass the limit is refused before it is kept.
        chunk = await part.read_chunk(max(MIN_READ, min(CHUNK, max_bytes + 1 - len(buf))))
        if not chunk:
            break
        if len(buf) + len(chunk) > max_bytes:
            raise errors.TooLarge(f"the file is larger than the limit of {max_bytes} bytes")
        buf += chunk
        if fmt is None and len(buf) >= SNIFF_BYTES:
            fmt = _sniff(bytes(buf[:SNIFF_BYTES]), part.filename)
    if not buf:
        raise BadRequest("the 'file' part is empty")
    if fmt is None:
        fmt = _sniff(bytes(buf), part.filename)
    return bytes(buf), fmt


def _sniff(head: bytes, filename: str | None) -> str:
    fmt = sniff_format(head)
    if fmt is None:
        named = f" ({filename!r})" if filename else ""
        raise errors.UnsupportedFormat(
            f"the file{named} is not a JPEG, PNG, WebP, GIF, TIFF, AVIF or HEIC/HEIF image "
            "(judged by its content, not its name)"
        )
    return fmt


async def _read_spec(part: BodyPartReader) -> Any:
    buf = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        if len(buf) + len(chunk) > MAX_SPEC_BYTES:
            raise errors.InvalidSpec(f"spec: larger than {MAX_SPEC_BYTES} bytes")
        buf += chunk
    return load_spec(bytes(buf))
