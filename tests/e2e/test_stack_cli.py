"""`pixstream stack` as a user runs it: a second stack on other ports, in its own home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from pixstream.settings import Settings
from pixstream.stack.base import pid_alive
from pixstream.stack.postgres import PostgresService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pixstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixstream", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def _pids(home: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted((home / "run").glob("*.pid"))]


async def test_stack_up_twice_down_and_up_again_keeps_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PIXSTREAM_HOME": str(home),
        "PIXSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "PIXSTREAM_DATABASE_URL": "postgresql://pixstream:pixstream@127.0.0.1:15432/pixstream",
        "PIXSTREAM_S3_ENDPOINT_URL": "http://127.0.0.1:19000",
    }
    dsn = env["PIXSTREAM_DATABASE_URL"]
    try:
        first = _pixstream(env, "stack", "up")
        assert first.returncode == 0, first.stderr
        pids = _pids(home)
        assert len(pids) == 3
        assert all(pid_alive(p) for p in pids)

        second = _pixstream(env, "stack", "up")  # harmless: same processes, nothing restarted
        assert second.returncode == 0, second.stderr
        assert _pids(home) == pids

        status = _pixstream(env, "stack", "status")
        assert status.returncode == 0
        for address in ("127.0.0.1:19092", "127.0.0.1:15432", "127.0.0.1:19000"):
            assert f"{address}" in status.stdout
        assert status.stdout.count(" up pid ") == 3

        marker = uuid.uuid4().hex
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
        await conn.execute("INSERT INTO kept VALUES ($1)", marker)
        await conn.close()

        down = _pixstream(env, "stack", "down")
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(p) for p in pids)
        assert _pixstream(env, "stack", "status").returncode == 1

        again = _pixstream(env, "stack", "up")
        assert again.returncode == 0, again.stderr
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT v FROM kept") == marker
        await conn.close()
    finally:
        _pixstream(env, "stack", "down")
        # The cluster may live outside the home (see PostgresService._data_dir): remove it.
        settings = Settings(home=home, database_url=SecretStr(dsn))
        shutil.rmtree(PostgresService(home.resolve(), settings).data.parent, ignore_errors=True)
