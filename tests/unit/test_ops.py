"""Every operation, asserted on sizes and pixels; params bounds and schemas."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from PIL import Image, ImageStat

from pixstream import errors
from pixstream.ops import OPERATIONS, catalogue
from tests.unit.conftest import BLUE, RED, Images, pixel

pytestmark = pytest.mark.unit


def run(op: str, image: Image.Image, **params: Any) -> Image.Image:
    operation = OPERATIONS[op]
    [result] = operation.run([image], operation.parse(params))
    return result


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"width": 1000}, (1000, 500)),
        ({"height": 100}, (200, 100)),
        ({"width": 500, "height": 500}, (500, 250)),
        ({"width": 500, "height": 500, "fit": "contain"}, (500, 250)),
        ({"width": 500, "height": 500, "fit": "cover"}, (500, 500)),
        ({"width": 500, "height": 500, "fit": "fill"}, (500, 500)),
        ({"width": 300, "height": 100, "fit": "cover"}, (300, 100)),
        ({"width": 4000}, (2000, 1000)),  # no upscale by default
        ({"width": 4000, "upscale": True}, (4000, 2000)),
        ({"width": 3000, "height": 3000, "fit": "cover"}, (2000, 1000)),
        ({"width": 3000, "height": 3000, "fit": "fill"}, (2000, 1000)),
        ({"width": 3000, "height": 3000, "fit": "fill", "upscale": True}, (3000, 3000)),
    ],
)
def test_resize_sizes(params: dict[str, Any], size: tuple[int, int]) -> None:
    assert run("resize", Image.new("RGB", (2000, 1000)), **params).size == size


def test_resize_contain_keeps_aspect_and_cover_crops_the_centre(images: Images) -> None:
    source = Image.new("RGB", (400, 200), BLUE)
    source.paste(RED, (150, 0, 250, 200))  # a red band in the middle
    contain = run("resize", source, width=200, height=200)
    assert contain.size == (200, 100)
    cover = run("resize", source, width=100, height=100, fit="cover")
    assert cover.size == (100, 100)
    # cover scales to 200x100 and keeps the middle: the red band (75..125) is now at 25..75
    assert cover.getpixel((50, 50)) == RED
    assert cover.getpixel((5, 50)) == BLUE


def test_resize_downscale_of_a_large_image_is_smooth(images: Images) -> None:
    small = run("resize", images.solid((4000, 3000), (100, 150, 200)), width=400)
    assert small.size == (400, 300)
    assert small.getpixel((200, 150)) == (100, 150, 200)


@pytest.mark.parametrize(
    ("source", "size", "expected"),
    [((2000, 1000), 256, (256, 128)), ((1000, 2000), 256, (128, 256)), ((100, 50), 256, (100, 50))],
)
def test_thumbnail_fits_within_a_square(
    source: tuple[int, int], size: int, expected: tuple[int, int]
) -> None:
    assert run("thumbnail", Image.new("RGB", source), size=size).size == expected


def test_crop_box(images: Images) -> None:
    source = images.marked((100, 80))  # red block 0..25 x 0..20
    cropped = run("crop", source, left=0, top=0, width=25, height=20)
    assert cropped.size == (25, 20)
    assert ImageStat.Stat(cropped).extrema[:3] == [(255, 255), (0, 0), (0, 0)]


def test_crop_box_outside_the_image_fails_at_run_time(images: Images) -> None:
    params = OPERATIONS["crop"].parse({"left": 90, "top": 0, "width": 20, "height": 10})
    with pytest.raises(errors.InvalidParams, match="outside the 100x80 image"):
        OPERATIONS["crop"].run([images.solid((100, 80))], params)


@pytest.mark.parametrize(
    ("aspect", "source", "size"),
    [
        ("16:9", (1600, 1600), (1600, 900)),
        ("1:1", (400, 300), (300, 300)),
        ("9:16", (1600, 900), (506, 900)),
    ],
)
def test_crop_aspect_centre(aspect: str, source: tuple[int, int], size: tuple[int, int]) -> None:
    assert run("crop", Image.new("RGB", source), aspect=aspect).size == size


def test_crop_aspect_entropy_keeps_the_detailed_side(images: Images) -> None:
    source = Image.new("RGB", (400, 100), (128, 128, 128))
    source.paste(images.noise((100, 100)), (300, 0))  # detail only at the right edge
    cropped = run("crop", source, aspect="1:1", gravity="entropy")
    assert cropped.size == (100, 100)
    assert ImageStat.Stat(cropped).stddev[0] > 30  # the noise, not the flat grey


def test_crop_aspect_entropy_uses_one_box_for_every_frame(images: Images) -> None:
    op = OPERATIONS["crop"]
    first = Image.new("RGB", (400, 100), (128, 128, 128))
    first.paste(images.noise((100, 100)), (0, 0))
    second = Image.new("RGB", (400, 100), (128, 128, 128))
    second.paste(images.noise((100, 100)), (300, 0))
    out = op.run([first, second], op.parse({"aspect": "1:1", "gravity": "entropy"}))
    assert ImageStat.Stat(out[0]).stddev[0] > 30
    assert ImageStat.Stat(out[1]).stddev[0] < 1  # same box as frame one


@pytest.mark.parametrize(
    "params",
    [
        {"aspect": "16x9"},
        {"aspect": "0:1"},
        {"left": 0},
        {"left": 0, "top": 0, "width": 0, "height": 5},
        {},
    ],
)
def test_crop_params_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidParams):
        OPERATIONS["crop"].parse(params)


def test_rotate_90_is_clockwise_and_exact(images: Images) -> None:
    rotated = run("rotate", images.marked((40, 20)), degrees=90)
    assert rotated.size == (20, 40)
    assert rotated.getpixel((19, 0)) == RED  # top-left went to top-right
    assert rotated.getpixel((0, 0)) == BLUE


def test_rotate_45_expands_the_canvas() -> None:
    rotated = run("rotate", Image.new("RGB", (100, 100), BLUE), degrees=45)
    assert rotated.width > 140
    assert rotated.getpixel((0, 0)) == (255, 255, 255)
    same = run("rotate", Image.new("RGB", (100, 100), BLUE), degrees=45, expand=False)
    assert same.size == (100, 100)


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_flip_mirrors_pixels(images: Images, direction: str) -> None:
    source = images.noise((7, 5))
    flipped = run("flip", source, direction=direction)
    for x in range(7):
        for y in range(5):
            mirror = (6 - x, y) if direction == "horizontal" else (x, 4 - y)
            assert flipped.getpixel(mirror) == source.getpixel((x, y))


def test_grayscale_has_equal_channels_in_rgb(images: Images) -> None:
    grey = run("grayscale", images.noise((32, 32)))
    assert grey.mode == "RGB"
    red, green, blue = grey.split()
    assert red.tobytes() == green.tobytes() == blue.tobytes()


def test_grayscale_keeps_alpha() -> None:
    grey = run("grayscale", Image.new("RGBA", (4, 4), (255, 0, 0, 77)))
    assert grey.mode == "RGBA"
    assert pixel(grey, (0, 0))[3] == 77


def test_blur_and_sharpen_change_detail(images: Images) -> None:
    source = images.noise((64, 64))
    spread = ImageStat.Stat(source).stddev[0]
    assert ImageStat.Stat(run("blur", source, radius=3)).stddev[0] < spread / 2
    edge = Image.new("RGB", (64, 64), (100, 100, 100))
    edge.paste((150, 150, 150), (32, 0, 64, 64))
    sharp = run("sharpen", edge, radius=2, percent=200)
    assert pixel(sharp, (33, 10))[0] > 150  # overshoot on the bright side of the edge
    assert run("blur", source, radius=0).tobytes() == source.tobytes()


def test_convert_is_identity_on_pixels(images: Images) -> None:
    source = images.noise((16, 16))
    assert run("convert", source, format="webp", quality=50) is source


@pytest.mark.parametrize(
    ("position", "marked_corner"),
    [("bottom-right", (0.9, 0.9)), ("top-left", (0.1, 0.1)), ("center", (0.5, 0.5))],
)
def test_watermark_draws_where_asked(position: str, marked_corner: tuple[float, float]) -> None:
    source = Image.new("RGB", (400, 300), (0, 0, 0))
    marked = run("watermark", source, text="PixStream", position=position, opacity=1.0)
    assert marked.size == source.size
    assert marked.mode == "RGB"
    fx, fy = marked_corner
    region = (int(400 * fx) - 60, int(300 * fy) - 30, int(400 * fx) + 60, int(300 * fy) + 30)
    region = (max(0, region[0]), max(0, region[1]), min(400, region[2]), min(300, region[3]))
    assert ImageStat.Stat(marked.crop(region)).extrema[0][1] > 200  # white text there
    far = (0, 0, 60, 40) if position != "top-left" else (340, 260, 400, 300)
    assert ImageStat.Stat(marked.crop(far)).extrema[0][1] == 0


@pytest.mark.parametrize(
    ("op", "params", "field"),
    [
        ("resize", {"width": 0}, "params.width"),
        ("resize", {"width": 100000}, "params.width"),
        ("resize", {}, "params"),
        ("resize", {"width": 10, "fit": "stretch"}, "params.fit"),
        ("resize", {"width": 10, "colour": "red"}, "params.colour"),
        ("thumbnail", {"size": 0}, "params.size"),
        ("blur", {"radius": 101}, "params.radius"),
        ("blur", {"radius": -1}, "params.radius"),
        ("convert", {"format": "jpeg", "quality": 0}, "params.quality"),
        ("convert", {"format": "jpeg", "quality": 101}, "params.quality"),
        ("convert", {"format": "bmp"}, "params.format"),
        ("convert", {"format": "jpeg", "lossless": True}, "params"),
        ("watermark", {"text": "x", "opacity": 1.5}, "params.opacity"),
        ("flip", {"direction": "diagonal"}, "params.direction"),
        ("rotate", {"degrees": 400}, "params.degrees"),
    ],
)
def test_out_of_range_params_are_refused(op: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.InvalidParams) as info:
        OPERATIONS[op].parse(params)
    assert info.value.message.startswith(f"{field}:"), info.value.message


def test_every_op_publishes_a_valid_json_schema() -> None:
    entries = catalogue()
    assert [entry["name"] for entry in entries] == list(OPERATIONS)
    for entry in entries:
        Draft202012Validator.check_schema(entry["params"])
