"""Shared fixtures: the real services, started once per run by `make test` (`stack up`).

A service that does not answer fails the run with the reason; nothing is skipped. Tests
isolate themselves with a unique topic prefix, database and key prefix each.
"""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from pixstream.db.migrate import apply_migrations
from pixstream.health import check_all
from pixstream.ingress import create_app
from pixstream.settings import Settings
from pixstream.topics import apply_topics, load_topics
from tests.harness import delete_topics

TEMPLATE_DB = "pixstream_test_template"

#: A test still running this long has its asyncio tasks' stacks printed, before pytest-timeout
#: (600 s, pyproject) fails it: that one shows only the main thread, which for a hung await
#: is the event loop's idle selector, never the await that hangs.
HANG_REPORT_SECONDS = 480.0


def _print_tasks(config: pytest.Config, test: str) -> None:
    stacks = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=stacks)
    # Past pytest's capture: in the log now, not in the report at the end of the run.
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n--- {test} still running after {HANG_REPORT_SECONDS:.0f} s:")
        reporter.write_line(stacks.getvalue())


@pytest.fixture(autouse=True)
async def _hang_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    timer = asyncio.get_running_loop().call_later(
        HANG_REPORT_SECONDS, _print_tasks, request.config, request.node.nodeid
    )
    yield
    timer.cancel()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    """The configured services, or testcontainers where a Docker engine answers."""
    if os.environ.get("PIXSTREAM_TESTCONTAINERS") == "1" and _docker_answers():
        from tests.containers import containers_settings

        with containers_settings() as settings:
            yield settings
        return
    yield Settings()


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Settings:
    """Fail the run (never skip) when a service the tests need does not answer."""
    report = asyncio.run(check_all(base_settings))
    if not report.ok:
        failed = "; ".join(f"{n}: {c.detail}" for n, c in report.checks.items() if not c.ok)
        pytest.fail(
            f"services not reachable ({failed}). Start them with `make up` "
            "(`pixstream stack up`) or point PIXSTREAM_* at running ones.",
            pytrace=False,
        )
    return base_settings


def _dsn_for(settings: Settings, database: str) -> str:
    dsn = settings.database_url.get_secret_value()
    return dsn.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def template_database(services: Settings) -> str:
    """A migrated database that each test's database is copied from (fast, isolated)."""

    async def build() -> None:
        conn = await asyncpg.connect(services.database_url.get_secret_value())
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        finally:
            await conn.close()
        await apply_migrations(_dsn_for(services, TEMPLATE_DB))

    asyncio.run(build())
    return TEMPLATE_DB


async def create_database(services: Settings, template: str) -> str:
    """A new database copied from the migrated template; returns its URL."""
    name = unique("pixstream_t_")
    conn = await asyncpg.connect(services.database_url.get_secret_value())
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await conn.close()
    return _dsn_for(services, name)


async def drop_database(services: Settings, url: str) -> None:
    conn = await asyncpg.connect(services.database_url.get_secret_value())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await conn.close()


def isolated(services: Settings, database_url: str, **updates: object) -> Settings:
    """Settings with their own topic prefix, consumer group and database."""
    prefix = unique("t")
    return services.model_copy(
        update={
            "topic_prefix": prefix,
            "app_id": prefix,
            "database_url": SecretStr(database_url),
            **updates,
        }
    )


@pytest.fixture
async def database_url(services: Settings, template_database: str) -> AsyncIterator[str]:
    url = await create_database(services, template_database)
    yield url
    await drop_database(services, url)


@pytest.fixture
async def settings(services: Settings, database_url: str) -> Settings:
    """Settings of one test: its own topic prefix, database and consumer group."""
    prefix = unique("t")
    return services.model_copy(
        update={
            "topic_prefix": prefix,
            "app_id": prefix,
            "database_url": services.database_url.__class__(database_url),
        }
    )


@pytest.fixture
async def topics(settings: Settings) -> AsyncIterator[Settings]:
    """Declare the test's own copy of topics/ on the broker; delete them afterwards."""
    await apply_topics(settings.kafka_bootstrap, load_topics(settings))
    yield settings
    await delete_topics(settings)


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the real ingress for given settings on 127.0.0.1; closed after the test. The
    one way the integration and e2e tests talk HTTP to an in-process ingress."""
    clients: list[TestClient[Any, Any]] = []

    async def make(settings: Settings, **options: Any) -> TestClient[Any, Any]:
        client = TestClient(TestServer(create_app(settings, **options), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by their folder too, so `-m unit` / `-m e2e` select whole layers."""
    for item in items:
        layer = item.path.parent.name
        if layer in ("unit", "e2e"):
            item.add_marker(getattr(pytest.mark, layer))
