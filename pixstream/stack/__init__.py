"""The local stack: real Kafka, PostgreSQL and MinIO started as plain processes, no Docker.

State and logs live under the settings' `home` (`.pixstream/` by default). Every service
answers `up()` idempotently, `down()` stops only what it started (by pid), `status()`.
"""

from __future__ import annotations

from pixstream.settings import Settings
from pixstream.stack.base import LocalService, ServiceStatus
from pixstream.stack.kafka import KafkaService
from pixstream.stack.minio import MinioService
from pixstream.stack.postgres import PostgresService


def services(settings: Settings) -> list[LocalService]:
    """The stack in start order."""
    home = settings.home.resolve()
    return [
        PostgresService(home, settings),
        KafkaService(home, settings),
        MinioService(home, settings),
    ]


__all__ = ["LocalService", "ServiceStatus", "services"]
