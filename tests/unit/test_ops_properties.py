"""Property-based tests: any valid params give the promised sizes; out-of-range are refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pixstream import errors
from pixstream.ops import OPERATIONS

pytestmark = pytest.mark.unit

sides = st.integers(min_value=1, max_value=48)
targets = st.integers(min_value=1, max_value=96)
fits = st.sampled_from(["contain", "cover", "fill"])
out_of_range = st.one_of(st.integers(max_value=0), st.integers(min_value=16385))


def resize(w: int, h: int, params: dict[str, Any]) -> tuple[int, int]:
    op = OPERATIONS["resize"]
    [out] = op.run([Image.new("RGB", (w, h), (9, 99, 199))], op.parse(params))
    assert out.getpixel((0, 0)) == (9, 99, 199)
    return out.size


@settings(max_examples=150, deadline=None)
@given(w=sides, h=sides, box_w=targets, box_h=targets, fit=fits)
def test_resize_with_upscale_gives_the_promised_box(
    w: int, h: int, box_w: int, box_h: int, fit: str
) -> None:
    out_w, out_h = resize(w, h, {"width": box_w, "height": box_h, "fit": fit, "upscale": True})
    if fit in ("cover", "fill"):
        assert (out_w, out_h) == (box_w, box_h)
    else:
        assert out_w <= box_w
        assert out_h <= box_h
        assert out_w == box_w or out_h == box_h
        # aspect ratio kept up to rounding each side by half a pixel
        assert abs(out_w * h - out_h * w) <= max(w, h)


@settings(max_examples=150, deadline=None)
@given(w=sides, h=sides, box_w=targets, box_h=targets, fit=fits)
def test_resize_without_upscale_never_grows(
    w: int, h: int, box_w: int, box_h: int, fit: str
) -> None:
    out_w, out_h = resize(w, h, {"width": box_w, "height": box_h, "fit": fit})
    assert out_w <= max(w, 1)
    assert out_h <= max(h, 1)
    assert out_w <= box_w
    assert out_h <= box_h


@settings(max_examples=100, deadline=None)
@given(w=sides, h=sides, width=targets)
def test_resize_by_width_keeps_aspect(w: int, h: int, width: int) -> None:
    out_w, out_h = resize(w, h, {"width": width, "upscale": True})
    assert out_w == width
    assert abs(out_h - h * width / w) <= 0.5 + 1e-9 or out_h == 1


@settings(max_examples=100, deadline=None)
@given(w=sides, h=sides, size=targets)
def test_thumbnail_fits_and_keeps_the_long_side(w: int, h: int, size: int) -> None:
    op = OPERATIONS["thumbnail"]
    [out] = op.run([Image.new("RGB", (w, h))], op.parse({"size": size}))
    assert max(out.size) == min(size, max(w, h))
    assert out.width <= w
    assert out.height <= h


@settings(max_examples=100, deadline=None)
@given(w=sides, h=sides, left=st.integers(0, 60), top=st.integers(0, 60), cw=targets, ch=targets)
def test_crop_box_inside_gives_its_size_outside_is_refused(
    w: int, h: int, left: int, top: int, cw: int, ch: int
) -> None:
    op = OPERATIONS["crop"]
    params = op.parse({"left": left, "top": top, "width": cw, "height": ch})
    if left + cw <= w and top + ch <= h:
        assert op.run([Image.new("RGB", (w, h))], params)[0].size == (cw, ch)
    else:
        with pytest.raises(errors.InvalidParams):
            op.run([Image.new("RGB", (w, h))], params)


@given(value=out_of_range, field=st.sampled_from(["width", "height"]))
def test_resize_dimensions_out_of_range_are_refused(value: int, field: str) -> None:
    with pytest.raises(errors.InvalidParams, match=rf"params\.{field}"):
        OPERATIONS["resize"].parse({field: value})


@given(
    value=st.one_of(st.floats(max_value=-0.001), st.floats(min_value=100.001)).filter(
        lambda v: v == v
    )
)
def test_radius_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(errors.InvalidParams, match=r"params\.radius"):
        OPERATIONS["blur"].parse({"radius": value})


@given(quality=st.one_of(st.integers(max_value=0), st.integers(min_value=101)))
def test_quality_out_of_range_is_refused(quality: int) -> None:
    with pytest.raises(errors.InvalidParams, match=r"params\.quality"):
        OPERATIONS["convert"].parse({"format": "webp", "quality": quality})


@given(quality=st.integers(1, 100), fmt=st.sampled_from(["jpeg", "png", "webp", "avif"]))
def test_quality_in_range_is_accepted(quality: int, fmt: str) -> None:
    assert OPERATIONS["convert"].parse({"format": fmt, "quality": quality}).quality == quality
