"""docker-compose.yml cannot run here (no Docker engine): check its shape instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pixstream.settings import Settings

pytestmark = pytest.mark.unit
COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_declares_the_stack_and_the_processes() -> None:
    services = _compose()["services"]
    assert {"kafka", "postgres", "minio", "setup", "ingress", "worker"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["postgres"]["image"].startswith("postgres")
    assert services["minio"]["image"].startswith("minio/minio")
    assert "pixstream ingress" in services["ingress"]["command"]
    assert "pixstream worker" in services["worker"]["command"]


def test_compose_processes_use_the_settings_variables() -> None:
    services = _compose()["services"]
    known = {f"PIXSTREAM_{name.upper()}" for name in Settings.model_fields}
    required = {
        "PIXSTREAM_KAFKA_BOOTSTRAP",
        "PIXSTREAM_DATABASE_URL",
        "PIXSTREAM_S3_ENDPOINT_URL",
        "PIXSTREAM_S3_BUCKET",
        "PIXSTREAM_S3_ACCESS_KEY_ID",
        "PIXSTREAM_S3_SECRET_ACCESS_KEY",
    }
    for name in ("setup", "ingress", "worker"):
        env = set(services[name]["environment"])
        assert required <= env, f"{name} lacks {required - env}"
        assert env <= known, f"{name} sets unknown variables {env - known}"


def test_env_example_documents_every_setting() -> None:
    example = (COMPOSE.parent / ".env.example").read_text()
    documented = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    }
    known = {f"PIXSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert documented <= known
    assert known - documented == {"PIXSTREAM_PRESETS"}  # a JSON object, described in README
