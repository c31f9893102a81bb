"""Who is asking: the tenant of the request's API key, or the anonymous tenant when the
deployment allows it (`PIXSTREAM_ANONYMOUS`). Every /v1/ request passes here first.

A presented key that is malformed, unknown or revoked is always 401: falling back to
anonymous would turn a typo into reading and writing in the wrong tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from pixstream import apikeys, errors
from pixstream.db import tenants
from pixstream.db.failures import translated
from pixstream.ingress.keys import POOL, SETTINGS

DB_ACQUIRE_TIMEOUT: Final = 5.0


class Unauthorized(errors.PermanentError):
    """No acceptable credentials: a 401 with `WWW-Authenticate: Bearer`."""

    code = "unauthorized"


class PresetRequired(errors.PermanentError):
    """Anonymous callers may only run presets here (`PIXSTREAM_ANONYMOUS=presets`)."""

    code = "preset_required"


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None  # None: no key was presented
    remote: str

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    @property
    def rate_key(self) -> str:
        """What the rate limit counts by: the key, or the address of a caller without one."""
        return f"key:{self.key_id}" if self.key_id is not None else f"addr:{self.remote}"

    def may_read(self, owner: str) -> bool:
        """Anonymous jobs are readable by whoever holds the id; a tenant's only by it."""
        return owner == self.tenant or owner == apikeys.ANONYMOUS


CALLER: Final = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    try:
        return request[CALLER]
    except KeyError:
        raise RuntimeError(f"{request.path} is not behind the auth middleware") from None


def bearer_key(header: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; Unauthorized when it is another
    scheme or not a PixStream key."""
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Authorization must be 'Bearer <API key>'")
    key = key.strip()
    if not apikeys.well_formed(key):
        raise Unauthorized("the API key is not valid (PixStream keys start with 'pxs_')")
    return key


async def identify(request: web.Request) -> Caller:
    app = request.app
    remote = request.remote or "unknown"
    key = bearer_key(request.headers.get("Authorization"))
    if key is None:
        if app[SETTINGS].anonymous == "off":
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <API key>'")
        return Caller(apikeys.ANONYMOUS, None, remote)
    async with translated(), app[POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT) as conn:
        owner = await tenants.owner_of(conn, key)
    if owner is None:
        raise Unauthorized("the API key is not valid")
    if owner.revoked:
        raise Unauthorized(f"the API key {owner.key_id} was revoked")
    return Caller(owner.tenant, owner.key_id, remote)


def check_spec_allowed(who: Caller, raw_spec: object, anonymous_policy: str) -> None:
    """Under `PIXSTREAM_ANONYMOUS=presets`, a caller without a key names a preset."""
    named_preset = isinstance(raw_spec, dict) and "preset" in raw_spec
    if who.anonymous and anonymous_policy == "presets" and not named_preset:
        raise PresetRequired(
            "this service runs only presets for requests without an API key: send "
            '{"preset": "<name>"} (GET /v1/presets lists them) or an API key'
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        request[CALLER] = await identify(request)
    return await handler(request)
