"""Errors as `application/problem+json` (RFC 9457): the one mapping from exceptions to HTTP.

PermanentError codes become 4xx, TransientError 503 with Retry-After, aiohttp's HTTP
exceptions keep their status, and anything else is a 500 whose details stay in the log.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field

from pixstream import errors

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:pixstream:problem:"
#: How long a client should wait before retrying after a 503 (dependencies down).
RETRY_AFTER_SECONDS: Final = 5

#: The HTTP status of each PermanentError code; any other code is a 422.
STATUS_BY_CODE: Final = {
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "job_not_retryable": 409,
    "source_expired": 410,
    "too_large": 413,
    "unsupported_format": 415,
    "rate_limited": 429,
}


class BadRequest(errors.PermanentError):
    """The request is malformed."""

    code = "bad_request"


class NotFound(errors.PermanentError):
    """No such resource."""

    code = "not_found"


class SourceExpired(errors.PermanentError):
    """The job's source is no longer retained, so it cannot run again."""

    code = "source_expired"


class RateLimited(errors.PermanentError):
    """Too many requests from this client; retry after the time in Retry-After."""

    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Problem(BaseModel):
    """An RFC 9457 problem detail; `code` is PixStream's stable error code."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:pixstream:problem:invalid_spec"])
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str = Field(description="The request path the problem is about.")
    code: str = Field(description="Stable machine-readable code.")


def problem(
    request: web.Request,
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A problem+json response about `request`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not name
        phrase = "Error"
    code = code or phrase.lower().replace(" ", "_").replace("-", "_")
    body = Problem(
        type=f"{TYPE_PREFIX}{code}",
        title=title or phrase,
        status=status,
        detail=detail,
        instance=request.path,
        code=code,
    )
    return web.Response(
        status=status,
        body=body.model_dump_json().encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def from_exception(request: web.Request, exc: BaseException) -> web.Response:
    """The problem response for any exception a handler raised."""
    if isinstance(exc, RateLimited):
        retry = str(max(1, round(exc.retry_after + 0.5)))
        return problem(request, 429, exc.message, code=exc.code, headers={"Retry-After": retry})
    if isinstance(exc, errors.PermanentError):
        status = STATUS_BY_CODE.get(exc.code, 422)
        challenge = {"WWW-Authenticate": 'Bearer realm="pixstream"'} if status == 401 else None
        return problem(request, status, exc.message, code=exc.code, headers=challenge)
    if isinstance(exc, errors.TransientError):
        log.warning("dependency failure on %s %s: %s", request.method, request.path, exc)
        return problem(
            request,
            503,
            f"a dependency is unavailable, nothing was accepted; retry later ({exc.message})",
            code="unavailable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, HttpProcessingError):  # aiohttp's parsers, reached from a handler
        status = exc.code if 400 <= exc.code < 500 else 400
        return problem(request, status, " ".join(exc.message.split()) or "malformed request")
    if isinstance(exc, web.HTTPException):
        headers = {k: v for k, v in exc.headers.items() if k in {"Allow", "Retry-After"}}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        return problem(
            request,
            exc.status,
            detail or _http_detail(request, exc.status),
            headers=headers or None,
        )
    log.exception("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return problem(request, 500, "an unexpected error occurred; it has been logged")


def _http_detail(request: web.Request, status: int) -> str:
    if status == 404:
        return f"no resource at {request.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return HTTPStatus(status).description or HTTPStatus(status).phrase


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not problems
            raise
        return from_exception(request, exc)
    except Exception as exc:  # every failure ends as a problem response, never a stack trace
        return from_exception(request, exc)
