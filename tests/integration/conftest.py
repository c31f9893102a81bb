"""Fixtures for the ingress tests: the real app on a loopback TestServer (`make_client`, from
tests/conftest.py), and test images."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from pixstream.settings import Settings
from tests.conftest import ClientFactory

SPEC: dict[str, Any] = {
    "steps": [
        {"id": "web", "op": "resize", "params": {"width": 32}},
        {
            "id": "webp",
            "op": "convert",
            "params": {"format": "webp", "quality": 80},
            "input": "web",
        },
        {"id": "thumb", "op": "thumbnail", "params": {"size": 16}},
    ]
}


def jpeg_bytes(
    size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, (0, 0, 255, 128)).save(buf, "PNG")
    return buf.getvalue()


def job_form(
    data: bytes | None = None,
    spec: Any = None,
    *,
    filename: str = "photo.jpg",
    spec_first: bool = False,
) -> aiohttp.FormData:
    """A submission; `spec` may be a dict (sent as JSON) or a str (sent verbatim)."""
    form = aiohttp.FormData()
    spec_text = spec if isinstance(spec, str) else json.dumps(SPEC if spec is None else spec)
    parts = [
        ("file", data if data is not None else jpeg_bytes(), filename, "image/jpeg"),
        ("spec", spec_text, None, "application/json"),
    ]
    for name, value, fname, ctype in parts[::-1] if spec_first else parts:
        form.add_field(name, value, filename=fname, content_type=ctype)
    return form


@pytest.fixture
async def client(topics: Settings, make_client: ClientFactory) -> TestClient[Any, Any]:
    """The ingress with the test's own topics and database."""
    return await make_client(topics)
