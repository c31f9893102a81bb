"""Hostile images built in code: the shapes that got past the limits in issue 10.

Each is small on disk and large once decoded; the GIFs are assembled from blocks Pillow
encoded, so every frame is valid LZW data a decoder would really expand.
"""

from __future__ import annotations

import io
import struct

from PIL import Image


def _encode_gif(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="GIF")
    return out.getvalue()


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _gif_parts(data: bytes) -> tuple[bytes, bytes]:
    """(header with the global palette, the first image block) of a Pillow-made GIF."""
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    header = data[:pos]
    while data[pos] == 0x21:  # extensions before the image
        pos = _skip_sub_blocks(data, pos + 2)
    assert data[pos] == 0x2C, "expected an image descriptor"
    local = data[pos + 9]
    start = pos
    pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
    return header, data[start : _skip_sub_blocks(data, pos)]


def _gif(canvas: tuple[int, int], blocks: list[bytes]) -> bytes:
    header, _ = _gif_parts(_encode_gif(Image.new("L", (1, 1))))
    header = b"GIF89a" + struct.pack("<HH", *canvas) + header[10:]
    control = b"!\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 100 ms, no disposal
    return header + b"".join(control + block for block in blocks) + b";"


def growing_gif(small: int = 10, big: int = 3000) -> bytes:
    """A small x small GIF whose second frame's descriptor grows the canvas to big x big."""
    _, first = _gif_parts(_encode_gif(Image.new("L", (small, small), 10)))
    _, second = _gif_parts(_encode_gif(Image.new("L", (big, big), 200)))
    return _gif((small, small), [first, second])


def animation_gif(frames: int, side: int) -> bytes:
    """`frames` frames of side x side, each a real full-canvas image block."""
    _, block = _gif_parts(_encode_gif(Image.new("L", (side, side), 90)))
    return _gif((side, side), [block] * frames)


def hidden_page_tiff(small: int = 10, big: int = 4000) -> bytes:
    """A small x small TIFF whose second page is big x big (deflated: tens of KB)."""
    out = io.BytesIO()
    Image.new("RGB", (small, small), (1, 2, 3)).save(
        out,
        format="TIFF",
        save_all=True,
        append_images=[Image.new("RGB", (big, big), (200, 0, 0))],
        compression="tiff_deflate",
    )
    return out.getvalue()
