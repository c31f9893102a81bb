"""Where a Docker engine answers: the same services from testcontainers (opt-in with
PIXSTREAM_TESTCONTAINERS=1). These machines have none, so the local stack is the default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from pydantic import SecretStr

from pixstream.settings import Settings


@contextmanager
def containers_settings() -> Iterator[Settings]:
    import asyncio

    from testcontainers.kafka import KafkaContainer
    from testcontainers.minio import MinioContainer
    from testcontainers.postgres import PostgresContainer

    from pixstream.storage import ensure_bucket

    with ExitStack() as stack:
        kafka = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        pg = stack.enter_context(
            PostgresContainer(
                "postgres:16", username="pixstream", password="pixstream", dbname="pixstream"
            )
        )
        minio = stack.enter_context(
            MinioContainer(access_key="pixstream", secret_key="pixstream-local-secret")
        )
        cfg = minio.get_config()
        settings = Settings(
            kafka_bootstrap=kafka.get_bootstrap_server(),
            database_url=SecretStr(pg.get_connection_url(driver=None)),
            s3_endpoint_url=f"http://{cfg['endpoint']}",
            s3_access_key_id=cfg["access_key"],
            s3_secret_access_key=SecretStr(cfg["secret_key"]),
        )
        asyncio.run(ensure_bucket(settings))
        yield settings
