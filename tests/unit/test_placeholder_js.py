"""The web page's ThumbHash decoder (static/thumbhash.js, run by Node) draws the same pixels as
the reference decoder in the `thumbhash` crate the worker encodes with (thumbhash-rs)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import thumbhash
from PIL import Image

pytestmark = pytest.mark.unit

DECODER = Path(__file__).resolve().parents[2] / "pixstream" / "ingress" / "static" / "thumbhash.js"
#: The reference truncates to a byte, the page's Uint8ClampedArray rounds: one level apart.
TOLERANCE = 1


def _landscape() -> Image.Image:
    image = Image.linear_gradient("L").resize((100, 70)).convert("RGBA")
    image.paste((200, 40, 40, 255), (10, 10, 60, 50))
    return image


def _portrait_with_alpha() -> Image.Image:
    image = Image.new("RGBA", (60, 100), (0, 0, 0, 0))
    image.paste((30, 120, 200, 255), (10, 10, 50, 90))
    return image


def _decode_in_node(hashes: list[bytes]) -> list[tuple[int, int, list[int]]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (make install puts it there for the AsyncAPI CLI)")
    script = f"""
const {{ thumbHashToRGBA }} = require({json.dumps(str(DECODER))});
const hashes = {json.dumps([base64.b64encode(h).decode() for h in hashes])};
console.log(JSON.stringify(hashes.map((b) => {{
  const r = thumbHashToRGBA(Uint8Array.from(Buffer.from(b, "base64")));
  return [r.w, r.h, Array.from(r.rgba)];
}})));
"""
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True)
    return [(w, h, rgba) for w, h, rgba in json.loads(out.stdout)]


@pytest.mark.parametrize("image", [_landscape(), _portrait_with_alpha()], ids=["rgb", "alpha"])
def test_the_page_decodes_what_the_reference_decodes(image: Image.Image) -> None:
    hashed = bytes(thumbhash.rgba_to_thumb_hash(image.width, image.height, image.tobytes()))
    want_w, want_h, want = thumbhash.thumb_hash_to_rgba(hashed)
    ((w, h, got),) = _decode_in_node([hashed])
    assert (w, h) == (want_w, want_h)
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, bytes(want), strict=True)) <= TOLERANCE
