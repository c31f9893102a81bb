"""Schemathesis generates requests from /openapi.json against the real ingress: never a 500."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_no_generated_request_gets_a_server_error(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{client.port}/openapi.json"
    # /health is left out: it only reports the dependencies and takes no input.
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", url,
        "--checks", "not_a_server_error",
        "--exclude-path", "/health",
        "--max-examples", "40",
        "--seed", "20261126",
        "--generation-database", "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its caches stay out of the checkout
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode == 0, output.decode(errors="replace")[-4000:]
