"""Budgets checked before work is done (issue 10): every frame and page, all frames together,
every step's output size; classified codec errors; unparsable specs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageFile

from pixstream import errors, spec
from pixstream.ingress.admission import check_upload
from pixstream.ops import OPERATIONS, codec
from pixstream.plan import Plan
from pixstream.render import SKIPPED_DEPENDENCY, render
from pixstream.spec import JobSpec, StepSpec
from tests.unit import hostile
from tests.unit.conftest import BLUE, Images

pytestmark = pytest.mark.unit

BUDGET = 50_000_000

#: The spec of issue 10: a 1x1 upload blown up to 16384x16384, rotated 45 degrees, blurred.
EXPLODING: dict[str, Any] = {
    "steps": [
        {
            "id": "huge",
            "op": "resize",
            "params": {"width": 16384, "height": 16384, "fit": "fill", "upscale": True},
        },
        {
            "id": "turned",
            "op": "rotate",
            "params": {"degrees": 45, "expand": True},
            "input": "huge",
        },
        {"id": "soft", "op": "blur", "params": {"radius": 100}, "input": "turned"},
        {"id": "thumb", "op": "thumbnail", "params": {"size": 8}},
    ]
}


def plan_of(raw: dict[str, Any]) -> Plan:
    return Plan.from_spec(JobSpec.model_validate(raw))


# -- every frame and page, and all of them together ---------------------------------------------
def test_hidden_second_tiff_page_is_refused_before_it_is_loaded() -> None:
    data = hostile.hidden_page_tiff()  # 10x10, then a 4000x4000 page
    assert len(data) < 100_000
    started = time.perf_counter()
    with pytest.raises(errors.TooManyPixels, match=r"frame 2 is 4000x4000") as info:
        codec.decode(data, max_pixels=1000, max_frames=10)
    assert info.value.code == "too_many_pixels"
    assert time.perf_counter() - started < 0.5  # 16 MP of deflate were never inflated
    assert codec.probe(data) == codec.Probe("tiff", 10, 10, 2, 100 + 16_000_000)


def test_gif_frame_that_grows_the_canvas_is_refused_before_it_is_loaded() -> None:
    data = hostile.growing_gif()  # 10x10 canvas; frame 2's descriptor is 3000x3000
    assert len(data) < 10_000
    with pytest.raises(errors.TooManyPixels, match=r"frame 2 is 3000x3000"):
        codec.decode(data, max_pixels=1000, max_frames=10)
    # The ingress sees it from the descriptors alone.
    assert codec.probe(data) == codec.Probe("gif", 10, 10, 2, 100 + 9_000_000)


def test_animation_over_the_budget_is_refused_before_any_frame_is_decoded() -> None:
    data = hostile.animation_gif(40, 1500)  # 40 x 2.25 MP = 90 MP against 50 MP
    started = time.perf_counter()
    with pytest.raises(errors.TooManyPixels, match="40 frames of 1500x1500 add up to 90000000"):
        codec.decode(data, max_pixels=BUDGET, max_frames=100)
    assert time.perf_counter() - started < 0.2
    assert codec.probe(data).pixels == 90_000_000


def test_pages_are_summed_even_when_each_one_fits(images: Images) -> None:
    pages = [images.solid((10, 10)), images.solid((20, 20)), images.solid((25, 20))]
    data = images.encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert len(codec.decode(data, max_pixels=1000, max_frames=10).frames) == 3
    with pytest.raises(errors.TooManyPixels, match="frames 1 to 3 add up to 1000"):
        codec.decode(data, max_pixels=999, max_frames=10)


def test_an_animation_within_the_budget_still_decodes_every_frame() -> None:
    decoded = codec.decode(hostile.animation_gif(5, 100), max_pixels=50_000, max_frames=10)
    assert len(decoded.frames) == 5
    assert all(frame.size == (100, 100) for frame in decoded.frames)


def test_pillow_never_only_warns_about_a_bomb(images: Images) -> None:
    # 100 MP is between Pillow's warning (89 MP) and error (179 MP) thresholds; with our own
    # budget at 50 MP the refusal is ours, with a code, whatever the warnings filters say.
    bomb = images.png_header_only(10_000, 10_000)
    with pytest.raises(errors.TooManyPixels):
        codec.decode(bomb, max_pixels=BUDGET, max_frames=1)
    with pytest.raises(errors.TooManyPixels):
        codec.probe(bomb)  # Pillow's own ceiling, made an error for the whole process


# -- every step's output size, from the header and the params -----------------------------------
def test_exploding_spec_is_refused_on_sizes_alone() -> None:
    plan = plan_of(EXPLODING)
    assert plan.output_sizes((1, 1))["huge"] == (16384, 16384)
    assert plan.output_sizes((1, 1))["turned"] == (23172, 23172)
    with pytest.raises(errors.TooManyPixels, match=r"step 'huge': .* 16384x16384 = 268435456"):
        plan.check_budget((1, 1), max_pixels=BUDGET)
    plan.check_budget((1, 1), max_pixels=23172 * 23172)  # a budget that big lets it through


def test_frames_multiply_a_steps_output() -> None:
    plan = plan_of({"steps": [{"id": "big", "op": "resize", "params": {"width": 1000}}]})
    plan.check_budget((1000, 1000), frames=50, max_pixels=BUDGET)
    with pytest.raises(errors.TooManyPixels, match=r"1000x1000 x 51 frames"):
        plan.check_budget((1000, 1000), frames=51, max_pixels=BUDGET)


def test_render_fails_the_exploding_branch_before_pillow_runs_it(images: Images) -> None:
    source = images.encode(images.solid((1, 1)), "PNG")
    started = time.perf_counter()
    result = render(source, plan_of(EXPLODING), max_pixels=BUDGET, max_frames=10)
    assert time.perf_counter() - started < 1.0  # nothing of 268 MP was allocated
    assert result.failures["huge"].code == "too_many_pixels"
    assert result.failures["turned"].code == SKIPPED_DEPENDENCY
    assert result.failures["soft"].code == SKIPPED_DEPENDENCY
    assert result.outputs["thumb"].width == 1  # the other branch completes


def test_ingress_check_refuses_the_exploding_spec_and_passes_a_normal_one(images: Images) -> None:
    one_pixel = images.encode(images.solid((1, 1)), "PNG")
    exploding = JobSpec.model_validate(EXPLODING)
    with pytest.raises(errors.TooManyPixels, match="step 'huge'"):
        check_upload(one_pixel, exploding, max_pixels=BUDGET, max_frames=100)
    normal = JobSpec(steps=[StepSpec(id="t", op="thumbnail", params={"size": 8})])
    probed = check_upload(one_pixel, normal, max_pixels=BUDGET, max_frames=100)
    assert probed == codec.Probe("png", 1, 1, 1, 1)
    with pytest.raises(errors.TooManyFrames):
        check_upload(hostile.animation_gif(5, 10), normal, max_pixels=BUDGET, max_frames=4)
    with pytest.raises(errors.TooManyPixels):
        check_upload(hostile.growing_gif(), normal, max_pixels=1000, max_frames=4)


def test_probe_reports_the_oriented_size(images: Images) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = images.encode(images.solid((40, 20)), "JPEG", exif=exif)
    assert codec.probe(data) == codec.Probe("jpeg", 20, 40, 1, 800)


sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))
PARAMS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "resize": st.fixed_dictionaries(
        {
            "width": st.integers(1, 80),
            "height": st.none() | st.integers(1, 80),
            "fit": st.sampled_from(["contain", "cover", "fill"]),
            "upscale": st.booleans(),
        }
    ),
    "thumbnail": st.fixed_dictionaries({"size": st.integers(1, 80)}),
    "crop": st.fixed_dictionaries(
        {
            "aspect": st.tuples(st.integers(1, 20), st.integers(1, 20)).map(
                lambda r: f"{r[0]}:{r[1]}"
            )
        }
    )
    | st.fixed_dictionaries({"left": st.just(0), "top": st.just(0), "width": st.just(1)}).map(
        lambda p: {**p, "height": 1}
    ),
    "rotate": st.fixed_dictionaries(
        {
            "degrees": st.floats(-360, 360) | st.sampled_from([0, 45, 90, -90, 180, 270, 360]),
            "expand": st.booleans(),
        }
    ),
    "flip": st.fixed_dictionaries({"direction": st.sampled_from(["horizontal", "vertical"])}),
    "grayscale": st.just({}),
    "blur": st.fixed_dictionaries({"radius": st.floats(0, 3)}),
    "sharpen": st.just({}),
    "convert": st.just({"format": "png"}),
    "watermark": st.just({"text": "x"}),
    "analyze": st.fixed_dictionaries({"colors": st.integers(1, 16)}),
}


def test_every_operation_has_a_size_strategy() -> None:
    assert set(PARAMS) == set(OPERATIONS)


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(sorted(OPERATIONS)), size=sizes, data=st.data())
def test_output_size_is_the_size_the_operation_makes(
    op: str, size: tuple[int, int], data: st.DataObject
) -> None:
    operation = OPERATIONS[op]
    params = operation.parse(data.draw(PARAMS[op]))
    [out] = operation.run([Image.new("RGB", size, BLUE)], params)
    assert out.size == operation.output_size(params, *size)


# -- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize("raised", [TypeError("x"), IndexError("y"), ZeroDivisionError()])
def test_anything_a_decoder_raises_is_corrupt_image(
    images: Images, monkeypatch: pytest.MonkeyPatch, raised: Exception
) -> None:
    def broken(self: ImageFile.ImageFile) -> Any:
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(errors.CorruptImage) as info:
        codec.decode(images.encode(images.solid((8, 8)), "PNG"), max_pixels=BUDGET, max_frames=1)
    assert info.value.code == "corrupt_image"
    assert info.value.__cause__ is raised


def test_anything_an_encoder_raises_is_corrupt_image(
    images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("encoder bug")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(errors.CorruptImage, match="cannot be encoded as png: encoder bug"):
        codec.encode([images.solid((8, 8))], "png")


def test_memory_error_is_not_called_corrupt(
    images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(self: ImageFile.ImageFile) -> Any:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    with pytest.raises(MemoryError):  # the render pool answers it with worker_crashed
        codec.decode(images.encode(images.solid((8, 8)), "PNG"), max_pixels=BUDGET, max_frames=1)


# -- specs that cannot be parsed ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"[" * 65536, "nested too deeply"),
        (b'{"a": ' * 5000, "nested too deeply"),
        (b"1" * 5000, "not valid JSON"),  # past int's 4300-digit conversion limit
        (b"\xff\xfe", "not UTF-8"),
        (b'{"steps": [', "not valid JSON"),
    ],
)
def test_a_spec_that_cannot_be_parsed_is_invalid_spec(document: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message) as info:
        spec.loads(document)
    assert info.value.code == "invalid_spec"
