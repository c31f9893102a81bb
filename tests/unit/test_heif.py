"""HEIC/HEIF input: sniffed, probed, decoded upright and kept under the same budgets.

The files are written by pillow-heif's own encoder here, never committed.
"""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image

from pixstream import errors
from pixstream.ingress.admission import check_upload
from pixstream.ops import codec
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec, parse_spec
from tests.unit.conftest import Images, pixel

pytestmark = pytest.mark.unit


def heic(*frames: Image.Image, orientation: int | None = None, make: str | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if make is not None:
        exif[ExifTags.Base.Make] = make
    out = io.BytesIO()
    frames[0].save(
        out,
        format="HEIF",
        quality=90,
        exif=exif.tobytes(),
        save_all=len(frames) > 1,
        append_images=list(frames[1:]),
    )
    return out.getvalue()


def spec(*steps: dict[str, object]) -> JobSpec:
    return parse_spec({"steps": list(steps)}, presets={}, max_steps=16)


def red_corner(image: Image.Image) -> tuple[int, int]:
    """Which corner (0 or 1 for x, y) of `image` is red."""
    w, h = image.size
    for cx, cy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        r, g, b = pixel(image, (2 + cx * (w - 5), 2 + cy * (h - 5)))[:3]
        if r > 180 and g < 80 and b < 80:
            return cx, cy
    raise AssertionError("no red corner")


def test_heic_is_sniffed_and_avif_is_still_avif(images: Images) -> None:
    data = heic(images.marked((64, 32)))
    assert codec.sniff_format(data[:64]) == "heif"
    avif = images.encode(images.marked((64, 32)), "AVIF")
    assert codec.sniff_format(avif[:64]) == "avif"
    # The generic brand with AVIF among its compatible brands is AVIF, without it HEIF.
    mif1 = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1"
    assert codec.sniff_format(mif1 + b"avif") == "avif"
    assert codec.sniff_format(mif1 + b"heic") == "heif"


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_an_oriented_heic_is_decoded_upright_like_a_jpeg(images: Images, orientation: int) -> None:
    stored = images.marked((64, 32))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    as_jpeg = codec.decode(
        images.encode(stored, "JPEG", exif=exif), max_pixels=10_000_000, max_frames=4
    )
    as_heic = codec.decode(
        heic(stored, orientation=orientation), max_pixels=10_000_000, max_frames=4
    )
    assert as_heic.format == "heif"
    assert as_heic.size == as_jpeg.size == as_heic.full_size
    assert red_corner(as_heic.frames[0]) == red_corner(as_jpeg.frames[0])


def test_the_probe_sees_the_upright_size_before_decoding(images: Images) -> None:
    data = heic(images.marked((64, 32)), orientation=6)
    assert codec.probe(data) == codec.Probe("heif", 32, 64, 1, 2048)


def test_a_heic_job_outputs_an_upright_jpeg_and_analyzes_as_heif(images: Images) -> None:
    data = heic(images.marked((640, 320)), orientation=6, make="Apple")
    plan = Plan.from_spec(
        spec(
            {"id": "thumb", "op": "thumbnail", "params": {"size": 64}},
            {"id": "info", "op": "analyze"},
        )
    )
    result = render(data, plan, max_pixels=10_000_000, max_frames=4)
    assert result.ok, result.failures
    thumb = result.outputs["thumb"]
    assert (thumb.format, thumb.width, thumb.height) == ("jpeg", 32, 64)
    assert Image.open(io.BytesIO(thumb.data)).size == (32, 64)
    info = result.reports["info"]
    dumped = info.model_dump()
    assert (dumped["format"], dumped["width"], dumped["height"]) == ("heif", 320, 640)
    assert dumped["exif"]["Make"] == "Apple"
    assert dumped["exif"]["Orientation"] == 6  # what the file said, though libheif rotated it


def test_every_image_of_a_heic_counts_against_the_budgets(images: Images) -> None:
    data = heic(images.noise((40, 30)), images.noise((80, 60), seed=2))
    probed = codec.probe(data)
    assert (probed.frames, probed.pixels) == (2, 40 * 30 + 80 * 60)
    steps = spec({"id": "info", "op": "analyze"})
    with pytest.raises(errors.TooManyFrames):
        check_upload(data, steps, max_pixels=10_000_000, max_frames=1)
    with pytest.raises(errors.TooManyPixels):  # each image fits, both together do not
        check_upload(data, steps, max_pixels=5000, max_frames=4)
    with pytest.raises(errors.TooManyPixels):
        codec.decode(data, max_pixels=5000, max_frames=4)
    decoded = codec.decode(data, max_pixels=10_000_000, max_frames=4)
    assert [f.size for f in decoded.frames] == [(40, 30), (80, 60)]


def test_the_admission_accepts_a_heic_within_the_budgets(images: Images) -> None:
    data = heic(images.marked((64, 32)), orientation=6)
    steps = spec({"id": "thumb", "op": "thumbnail", "params": {"size": 16}})
    assert check_upload(data, steps, max_pixels=10_000, max_frames=1).format == "heif"
    with pytest.raises(errors.TooManyPixels):
        check_upload(data, steps, max_pixels=2000, max_frames=1)
