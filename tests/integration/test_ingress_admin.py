"""PIXSTREAM_ADMIN_PORT: /metrics and /health on a listener of their own, and only there;
the sharing of one check by many callers is tests/unit/test_status.py."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from pixstream.ingress import create_app
from pixstream.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def ports(topics: Settings) -> AsyncIterator[tuple[str, str]]:
    api, admin = _free_port(), _free_port()
    runner = web.AppRunner(create_app(topics.model_copy(update={"admin_port": admin})))
    await runner.setup()
    for port in (api, admin):
        await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{api}", f"http://127.0.0.1:{admin}"
    await runner.cleanup()


async def test_metrics_and_health_answer_on_the_admin_port_only(
    ports: tuple[str, str],
) -> None:
    api, admin = ports
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/health"):
            async with http.get(api + path) as resp:
                assert resp.status == 404, path
            async with http.get(admin + path) as resp:
                assert resp.status == 200, path
        async with http.get(admin + "/v1/presets") as resp:
            assert resp.status == 404
        async with http.get(api + "/v1/presets") as resp:
            assert resp.status == 200
        async with http.get(admin + "/metrics") as resp:
            assert "pixstream_outbox_pending" in await resp.text()
