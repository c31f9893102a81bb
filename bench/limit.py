"""The codec limit: the contract's example spec (resize to 1024 wide -> WebP q80, and a 256 px
thumbnail -> JPEG q85) in a plain Pillow loop, `processes` processes, the photos in RAM.

Two ways of doing the same job: `one_decode` decodes the source once, drafted to the largest
size either output needs (what PixStream's plan asks of the decoder, so no pipeline can beat
it), and `decode_per_output` decodes it again for each output, each drafted to its own size
(what a synchronous proxy pays, one request per output). Same filters and encoder options as
PixStream (LANCZOS with reducing_gap 2.0; WebP method 4; JPEG optimize progressive).
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Any

from PIL import Image, ImageOps

from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec
from tests.harness import CONTRACT_SPEC

WEB_WIDTH = 1024
THUMB = 256
WEBP = {"format": "WEBP", "quality": 80, "method": 4}
JPEG = {"format": "JPEG", "quality": 85, "optimize": True, "progressive": True}
_ORIENTATION = 0x0112
_SWAPPED = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter

_photos: list[bytes] = []  # each pool process's copy of the corpus


def _load(photos: list[bytes]) -> None:
    _photos[:] = photos


def _open(data: bytes, box: tuple[int, int]) -> Image.Image:
    """Decode, drafted so that the oriented image still covers `box` (width, height)."""
    im = Image.open(io.BytesIO(data))
    swap = im.getexif().get(_ORIENTATION) in _SWAPPED
    w, h = (im.height, im.width) if swap else im.size
    scale = min(1.0, max(box[0] / w, box[1] / h))
    need = (max(1, round(w * scale)), max(1, round(h * scale)))
    im.draft("RGB", (need[1], need[0]) if swap else need)
    oriented = ImageOps.exif_transpose(im)
    return oriented.convert("RGB") if oriented.mode != "RGB" else oriented


def _web_box(width: int, height: int) -> tuple[int, int]:
    if width <= WEB_WIDTH:
        return width, height
    return WEB_WIDTH, max(1, round(height * WEB_WIDTH / width))


def _thumb_box(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, THUMB / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _oriented_size(data: bytes) -> tuple[int, int]:
    im = Image.open(io.BytesIO(data))
    swap = im.getexif().get(_ORIENTATION) in _SWAPPED
    return (im.height, im.width) if swap else im.size


def _save(im: Image.Image, options: dict[str, Any]) -> int:
    out = io.BytesIO()
    im.save(out, **options)
    return out.tell()


def _resample(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    if im.size == size:
        return im
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def one_decode(index: int) -> int:
    """The job with one decode, drafted for the web output (the larger one)."""
    data = _photos[index % len(_photos)]
    full = _oriented_size(data)
    im = _open(data, _web_box(*full))
    web = _resample(im, _web_box(*im.size))
    thumb = _resample(im, _thumb_box(*im.size))
    return _save(web, WEBP) + _save(thumb, JPEG)


def decode_per_output(index: int) -> int:
    """The job as two requests to a proxy: each output decodes the source for itself."""
    data = _photos[index % len(_photos)]
    full = _oriented_size(data)
    web = _open(data, _web_box(*full))
    web = _resample(web, _web_box(*web.size))
    thumb = _open(data, _thumb_box(*full))
    thumb = _resample(thumb, _thumb_box(*thumb.size))
    return _save(web, WEBP) + _save(thumb, JPEG)


_plan: list[Plan] = []


def render_ms(index: int) -> float:
    """PixStream's own render() of the job on one photo, in milliseconds (best of 2)."""
    if not _plan:
        _plan.append(Plan.from_spec(JobSpec.model_validate(CONTRACT_SPEC)))
    data = _photos[index]
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        render(data, _plan[0], max_pixels=50_000_000, max_frames=100)
        best = min(best, time.perf_counter() - start)
    return best * 1000


class Loop:
    """`processes` processes that hold the photos and run jobs on them."""

    def __init__(self, photos: Sequence[bytes], processes: int) -> None:
        self.photos = list(photos)
        self.processes = processes
        # forkserver: the pool must not fork the benchmark with its threads and sockets.
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_load,
            initargs=(self.photos,),
        )

    def __enter__(self) -> Loop:
        self.run(one_decode, len(self.photos))  # every process started, caches warm
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True)

    def run(self, job: Callable[[int], int], count: int) -> float:
        """Jobs/s of `count` jobs, the photos cycled, every process busy."""
        start = time.perf_counter()
        list(self._pool.map(job, range(count)))
        return count / (time.perf_counter() - start)

    def render_ms(self) -> list[float]:
        """PixStream's render() time of each photo, one at a time (nothing else running)."""
        return [self._pool.submit(render_ms, i).result() for i in range(len(self.photos))]
