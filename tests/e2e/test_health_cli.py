"""`pixstream health` as operators run it: a line per service, exit 0 only when all answer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pixstream.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]


def _health(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixstream", "health"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_health_is_ok_when_every_service_answers(services: Settings) -> None:
    result = _health()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["kafka", "ok"],
        ["postgres", "ok"],
        ["s3", "ok"],
    ]


def test_health_fails_naming_the_service_that_does_not_answer(services: Settings) -> None:
    result = _health(PIXSTREAM_S3_ENDPOINT_URL="http://127.0.0.1:1")  # nothing listens there
    assert result.returncode == 1
    status = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert status == {"kafka": "ok", "postgres": "ok", "s3": "FAIL"}
