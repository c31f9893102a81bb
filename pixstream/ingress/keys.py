"""The keys under which the ingress app holds its settings and its shared clients."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

from pixstream.ingress.ratelimit import RateLimiter
from pixstream.settings import Settings
from pixstream.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
POOL: web.AppKey[Any] = web.AppKey("pool")  # asyncpg.Pool; asyncpg ships no types
STORAGE = web.AppKey("storage", Storage)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
LIMITER = web.AppKey("limiter", RateLimiter)
#: Seconds to wait for Kafka's acknowledgement of a job.requested event before a 503.
KAFKA_TIMEOUT = web.AppKey("kafka_timeout", float)
