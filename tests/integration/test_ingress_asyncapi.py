"""GET /asyncapi.json on the real ingress: the checked-in document, with the deployment's topics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixstream.asyncapi import DEFAULT_PREFIX
from pixstream.settings import Settings
from tests.conftest import ClientFactory

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.s3]

FILE = Path(__file__).resolve().parents[2] / "schemas" / "asyncapi.json"


async def test_asyncapi_json_is_the_checked_in_file(
    settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(settings.model_copy(update={"topic_prefix": DEFAULT_PREFIX}))
    resp = await client.get("/asyncapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == json.loads(FILE.read_text(encoding="utf-8"))


async def test_asyncapi_json_names_this_deployments_topics(
    settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(settings)
    doc = await (await client.get("/asyncapi.json")).json()
    for channel in ("jobs", "events", "dlq"):
        assert doc["channels"][channel]["address"] == settings.topic(channel)
    assert doc["channels"]["op"]["address"] == settings.topic("op.{op}")
