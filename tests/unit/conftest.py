"""Image factories for the unit tests: every test image is generated here, in code."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """getpixel() for multi-band images, typed as the tuple it returns."""
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


class Images:
    """Builds test images as PIL images or encoded bytes."""

    @staticmethod
    def solid(
        size: tuple[int, int], colour: tuple[int, ...] = BLUE, mode: str = "RGB"
    ) -> Image.Image:
        return Image.new(mode, size, colour)

    @staticmethod
    def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
        rng = random.Random(seed)
        return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))

    @staticmethod
    def marked(size: tuple[int, int]) -> Image.Image:
        """Blue with a red block in the top-left corner (a quarter of each side)."""
        image = Image.new("RGB", size, BLUE)
        image.paste(RED, (0, 0, max(1, size[0] // 4), max(1, size[1] // 4)))
        return image

    @staticmethod
    def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
        out = io.BytesIO()
        image.save(out, format=fmt, **options)
        return out.getvalue()

    @staticmethod
    def animated_gif(frames: int, size: tuple[int, int] = (40, 30)) -> bytes:
        colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
        images = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
        out = io.BytesIO()
        images[0].save(
            out, format="GIF", save_all=True, append_images=images[1:], duration=80, loop=0
        )
        return out.getvalue()

    @staticmethod
    def png_header_only(width: int, height: int) -> bytes:
        """A tiny PNG that declares width x height (a decompression bomb's shape)."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            crc = zlib.crc32(kind + data) & 0xFFFFFFFF
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\x00" * (1 + 3 * 64) * 64)
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        )


@pytest.fixture
def images() -> Images:
    return Images()
