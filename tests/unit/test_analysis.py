"""The analyze op on values: upright sizes, the EXIF allow-list, colours, placeholders, frames."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import pytest
import thumbhash
from blurhash_rs import blurhash_decode
from PIL import ExifTags, Image, ImageStat

from pixstream import errors
from pixstream.ops.analysis import Analysis
from pixstream.ops.exif import ExifSubset
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import parse_spec
from tests.unit.conftest import BLUE, RED, Images

pytestmark = pytest.mark.unit

LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_frames": 100}
ANALYZE_ONLY = {"steps": [{"id": "info", "op": "analyze"}]}


def plan_of(raw: dict[str, Any]) -> Plan:
    return Plan.from_spec(parse_spec(raw, presets={}, max_steps=16))


def analyze(source: bytes, raw: dict[str, Any] = ANALYZE_ONLY, step: str = "info") -> Analysis:
    result = render(source, plan_of(raw), **LIMITS)
    assert result.ok, result.failures
    report = result.reports[step]
    assert isinstance(report, Analysis)
    return report


def two_colours(size: tuple[int, int], first: tuple[int, int, int], share: float) -> Image.Image:
    """`first` on the left `share` of the image, blue on the rest."""
    image = Image.new("RGB", size, BLUE)
    image.paste(first, (0, 0, round(size[0] * share), size[1]))
    return image


def camera_exif(orientation: int = 1, *, gps: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon\x00"
    exif[ExifTags.Base.Model] = "Canon EOS R6  "
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Artist] = "Jane Doe"  # not on the allow-list: must not come out
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.ExposureTime] = 0.004
    sub[ExifTags.Base.FNumber] = 2.8
    sub[ExifTags.Base.ISOSpeedRatings] = 400
    sub[ExifTags.Base.FocalLength] = 35.0
    sub[ExifTags.Base.DateTimeOriginal] = "2024:06:01 19:42:07"
    sub[ExifTags.Base.LensModel] = "RF35mm F1.8 MACRO IS STM"
    sub[ExifTags.Base.BodySerialNumber] = "0123456789"  # identifies a person's camera
    if gps:
        location = exif.get_ifd(ExifTags.IFD.GPSInfo)
        location[ExifTags.GPS.GPSLatitudeRef] = "N"
        location[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
        location[ExifTags.GPS.GPSLongitudeRef] = "E"
        location[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 7.0)
    return exif


def test_an_oriented_jpeg_reports_its_upright_size(images: Images) -> None:
    source = images.encode(images.noise((60, 40)), "JPEG", exif=camera_exif(6))
    report = analyze(source)
    assert (report.width, report.height) == (40, 60)
    assert report.exif.Orientation == 6  # as read; the size is already upright


def test_the_size_is_the_full_one_when_the_jpeg_is_decoded_at_a_draft_scale(
    images: Images,
) -> None:
    # Analyze alone needs about 100 px: libjpeg decodes 1/8 of the image, the report does not.
    source = images.encode(images.noise((1600, 1200)), "JPEG", exif=camera_exif(8))
    plan = plan_of(ANALYZE_ONLY)
    assert plan.draft_size(1200, 1600) == (75, 100)
    report = analyze(source)
    assert (report.width, report.height) == (1200, 1600)


def test_the_exif_subset_is_the_allow_list_and_never_gps(images: Images) -> None:
    source = images.encode(images.noise((32, 24)), "JPEG", exif=camera_exif())
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # it has GPS

    report = analyze(source)
    assert report.exif == ExifSubset(
        Make="Canon",
        Model="Canon EOS R6",
        LensModel="RF35mm F1.8 MACRO IS STM",
        DateTimeOriginal="2024:06:01 19:42:07",
        ExposureTime=0.004,
        FNumber=2.8,
        ISO=400,
        FocalLength=35.0,
        Orientation=1,
    )
    text = report.model_dump_json()
    for leak in ("GPS", "48.0", "51.0", "Jane Doe", "0123456789"):
        assert leak not in text
    assert set(json.loads(text)["exif"]) == set(ExifSubset.model_fields)


def test_a_source_without_exif_reports_an_empty_subset(images: Images) -> None:
    report = analyze(images.encode(images.noise((8, 8)), "PNG"))
    assert report.exif == ExifSubset()


def test_unreadable_exif_values_are_left_out() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = b"\x00\x01\x02"  # nothing printable
    exif[ExifTags.Base.Model] = 42  # not text
    exif[ExifTags.Base.Orientation] = 99  # no such orientation
    from pixstream.ops.exif import subset

    assert subset(exif) == ExifSubset()


def test_colours_of_a_two_colour_image_come_most_frequent_first(images: Images) -> None:
    red_first = images.encode(two_colours((200, 100), RED, 0.7), "PNG")
    assert analyze(red_first).dominant_colors == ["#ff0000", "#0000ff"]
    blue_first = images.encode(two_colours((200, 100), RED, 0.3), "PNG")
    assert analyze(blue_first).dominant_colors == ["#0000ff", "#ff0000"]


def test_the_colour_count_is_a_bounded_param(images: Images) -> None:
    source = images.encode(two_colours((200, 100), RED, 0.7), "PNG")
    one = {"steps": [{"id": "info", "op": "analyze", "params": {"colors": 1}}]}
    assert analyze(source, one).dominant_colors == ["#ff0000"]
    for bad in (0, 17):
        with pytest.raises(errors.InvalidParams, match=r"step 'info': params\.colors"):
            plan_of({"steps": [{"id": "info", "op": "analyze", "params": {"colors": bad}}]})


def test_jpeg_noise_around_a_colour_is_not_reported_as_another_colour(images: Images) -> None:
    source = images.encode(two_colours((300, 200), RED, 0.7), "JPEG", quality=90)
    colours = analyze(source).dominant_colors
    assert len(colours) == 2
    assert [c[1:3] >= "f0" for c in colours] == [True, False]  # red-ish, then blue-ish


def test_transparent_pixels_are_not_the_image_colour(images: Images) -> None:
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    image.paste((0, 255, 0, 255), (0, 0, 30, 100))  # the only visible colour: 30 %
    report = analyze(images.encode(image, "PNG"))
    assert report.has_alpha
    assert report.dominant_colors == ["#00ff00"]


def test_the_blurhash_decodes_to_the_image_average_colour(images: Images) -> None:
    colour = (200, 120, 40)
    report = analyze(images.encode(images.solid((120, 80), colour), "PNG"))
    mean = ImageStat.Stat(blurhash_decode(report.blurhash, 32, 24)).mean
    # BlurHash quantises its average colour to sRGB bytes and its AC terms coarsely.
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(mean, colour, strict=True))


def test_the_thumbhash_decodes_to_the_image_average_colour_and_aspect(images: Images) -> None:
    colour = (200, 120, 40)
    report = analyze(images.encode(images.solid((120, 80), colour), "PNG"))
    packed = base64.b64decode(report.thumbhash, validate=True)
    r, g, b, a = thumbhash.thumb_hash_to_average_rgba(packed)
    # ThumbHash keeps its average in 6-bit L, P and Q channels: a few levels of error.
    assert all(abs(x * 255 - y) <= TOLERANCE for x, y in zip((r, g, b), colour, strict=True))
    assert a == pytest.approx(1.0)
    assert thumbhash.thumb_hash_to_approximate_aspect_ratio(packed) == pytest.approx(1.5, 0.1)
    width, height, rgba = thumbhash.thumb_hash_to_rgba(packed)
    assert len(rgba) == width * height * 4


TOLERANCE = 6


def test_the_placeholders_of_a_fixed_image_are_stable(images: Images) -> None:
    # Pinned: a library upgrade that changes them changes every stored placeholder.
    source = images.encode(images.marked((120, 80)), "PNG")
    first, second = analyze(source), analyze(source)
    assert (first.blurhash, first.thumbhash) == (second.blurhash, second.thumbhash)
    assert first.blurhash == BLURHASH_OF_MARKED
    assert first.thumbhash == THUMBHASH_OF_MARKED


BLURHASH_OF_MARKED = "LI8Bc[|U]1$1|U|T;u$0]1;u,Swt"
THUMBHASH_OF_MARKED = "1RACLYiHh4eId4dwd3d4iN/v/f3e"


def test_an_animated_gif_reports_its_frames(images: Images) -> None:
    source = images.animated_gif(3)
    report = analyze(source)
    assert (report.format, report.frames, report.animated) == ("gif", 3, True)
    assert (report.width, report.height) == (40, 30)
    assert analyze(images.encode(images.noise((8, 8)), "PNG")).animated is False


def test_sha256_is_of_the_source_bytes_and_the_format_is_the_source_format(
    images: Images,
) -> None:
    source = images.encode(images.noise((16, 16)), "WEBP")
    report = analyze(source)
    assert report.sha256 == hashlib.sha256(source).hexdigest()
    assert report.format == "webp"


def test_analyze_of_a_step_reports_that_step_image(images: Images) -> None:
    raw = {
        "steps": [
            {"id": "small", "op": "resize", "params": {"width": 100}},
            {"id": "info", "op": "analyze", "input": "small"},
        ]
    }
    source = images.encode(images.noise((400, 200)), "PNG")
    result = render(source, plan_of(raw), **LIMITS)
    report = result.reports["info"]
    assert isinstance(report, Analysis)
    assert (report.width, report.height) == (100, 50)
    assert report.sha256 == hashlib.sha256(source).hexdigest()
    assert result.outputs == {}  # "small" is read by "info": not an output itself


def test_a_step_cannot_take_an_analyze_step_as_input() -> None:
    raw = {
        "steps": [
            {"id": "info", "op": "analyze"},
            {"id": "thumb", "op": "thumbnail", "params": {"size": 64}, "input": "info"},
        ]
    }
    with pytest.raises(errors.InvalidSpec) as caught:
        parse_spec(raw, presets={}, max_steps=16)
    assert caught.value.message == (
        "step 'thumb': input 'info' is an analyze step, which reports metadata and makes no "
        "image; take 'source' or an image step as input"
    )


def test_analyze_is_under_the_frame_and_pixel_budgets(images: Images) -> None:
    plan = plan_of(ANALYZE_ONLY)
    with pytest.raises(errors.TooManyFrames):
        render(images.animated_gif(5), plan, max_pixels=50_000_000, max_frames=4)
    with pytest.raises(errors.TooManyPixels):
        render(images.png_header_only(10_000, 10_000), plan, max_pixels=1_000_000, max_frames=4)


def test_analyze_next_to_image_steps_leaves_their_outputs_alone(images: Images) -> None:
    raw = {
        "steps": [
            {"id": "info", "op": "analyze"},
            {"id": "thumb", "op": "thumbnail", "params": {"size": 64}},
        ]
    }
    source = images.encode(images.noise((640, 480)), "JPEG")
    result = render(source, plan_of(raw), **LIMITS)
    assert set(result.outputs) == {"thumb"}
    assert set(result.reports) == {"info"}
    info = result.reports["info"]
    assert isinstance(info, Analysis)
    assert (info.width, info.height) == (640, 480)
