"""An async client of the HTTP API, importable by other programs (`pixstream submit` is one):
submit an image streamed from disk, follow a job over its server-sent events, read a job,
download an output to a file. One `async with Client(url)` opens and closes its session.

Errors, one tree:
    ClientError
    ├── Unreachable   the ingress did not answer (refused, DNS, timeout)
    └── Refused       it answered with a problem (status, code, detail)
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, Final

import aiohttp

from pixstream import sse
from pixstream.events import TERMINAL_TYPES, CloudEvent

CHUNK: Final = 256 * 1024
#: Reconnects of one event stream in a row without a new event before giving up.
MAX_RECONNECTS: Final = 5


class ClientError(Exception):
    """A request to the ingress did not succeed."""


class Unreachable(ClientError):
    """The ingress did not answer."""


class Refused(ClientError):
    """The ingress answered with a problem."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Client:
    """The ingress at `base_url`; `api_key` acts as that key's tenant."""

    def __init__(self, base_url: str, *, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # Sent to the ingress only, never to the presigned URLs of the object store.
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No total timeout: an event stream lasts as long as its job; a silent socket is
        # cut after 60 s (the server sends a comment at least every 15 s).
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60, connect=10)
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def submit(
        self, path: Path, spec: dict[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """Upload `path` (read in chunks as it is sent, never whole) with `spec`; the job id."""
        form = aiohttp.FormData()
        form.add_field("spec", json.dumps(spec), content_type="application/json")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as file:  # aiohttp streams a file object in chunks
            form.add_field("file", file, filename=path.name, content_type=ctype)
            body = await self._request("POST", "/v1/jobs", data=form, headers=headers)
        return str(body["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: status, progress, outputs (presigned URLs), errors."""
        return await self._request("GET", f"/v1/jobs/{job_id}")

    async def events(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[CloudEvent]:
        """The job's lifecycle events from the first (or after `last_event_id`) to the
        terminal one the server ends the stream at (its current run's: a terminal event a
        retry followed does not end it); a dropped stream is resumed with Last-Event-ID, as
        browsers do."""
        last, failures = last_event_id, 0
        while True:
            # Only this connection's last event says whether the server ended the stream at
            # the end: one that breaks after a terminal event a retry followed, then ends
            # at once (a server shutting down), has not.
            ended = False
            headers = {"Accept": sse.CONTENT_TYPE, **self._auth}
            if last:
                headers["Last-Event-ID"] = last
            try:
                async with self._http.get(
                    self._url(f"/v1/jobs/{job_id}/events"), headers=headers
                ) as resp:
                    if resp.status != 200:
                        raise await _refused(resp)
                    async with aclosing(sse.messages(resp.content)) as stream:
                        async for message in stream:
                            event = CloudEvent.model_validate_json(message.data)
                            last, failures = event.id, 0
                            ended = event.type in TERMINAL_TYPES
                            yield event
                if ended:  # the stream ended at a terminal event: the server says it is over
                    return
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise Unreachable(f"the event stream of {job_id} broke: {_why(exc)}") from exc
                await asyncio.sleep(min(2.0**failures, 10.0))
                continue
            # The server ended the stream without a terminal event (shutting down): resume.
            failures += 1
            if failures > MAX_RECONNECTS:
                raise Unreachable(f"the event stream of {job_id} kept ending early")
            await asyncio.sleep(min(2.0**failures, 10.0))

    async def download(self, url: str, target: Path) -> int:
        """Write the object at `url` (a presigned URL) to `target`, a chunk at a time; bytes."""
        written = 0
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise Refused(resp.status, "download_failed", f"GET {target.name}")
                part = target.with_name(target.name + ".part")
                with part.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        await asyncio.to_thread(out.write, chunk)
                        written += len(chunk)
                part.replace(target)
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(f"downloading {target.name}: {_why(exc)}") from exc
        return written

    async def _request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        headers = {**(headers or {}), **self._auth}
        try:
            async with self._http.request(
                method, self._url(path), headers=headers, **kwargs
            ) as resp:
                if resp.status >= 400:
                    raise await _refused(resp)
                body: dict[str, Any] = await resp.json(content_type=None)
                return body
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable(f"cannot reach the ingress at {self.base_url}: {_why(exc)}") from exc
        except TimeoutError as exc:
            raise Unreachable(f"the ingress at {self.base_url} did not answer in time") from exc


async def _refused(resp: aiohttp.ClientResponse) -> Refused:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        body = None
    if isinstance(body, dict):
        return Refused(resp.status, str(body.get("code", "error")), str(body.get("detail", "")))
    return Refused(resp.status, "error", resp.reason or "")


def _why(exc: BaseException) -> str:
    """A short reason: aiohttp's messages repeat the address and the OS error."""
    cause = getattr(exc, "os_error", None) or exc.__cause__ or exc
    return getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
