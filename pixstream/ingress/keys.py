"""The keys under which the ingress app holds its settings and its shared clients."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pixstream.ingress.ratelimit import RateLimiter
from pixstream.ingress.relay import OutboxRelay
from pixstream.ingress.status import Status
from pixstream.settings import Settings
from pixstream.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
POOL: web.AppKey[Any] = web.AppKey("pool")  # asyncpg.Pool; asyncpg ships no types
STORAGE = web.AppKey("storage", Storage)
LIMITER = web.AppKey("limiter", RateLimiter)
RELAY = web.AppKey("relay", OutboxRelay)
HEALTH = web.AppKey("health", Status)
