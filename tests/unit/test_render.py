"""render(): one decode, images passed between steps, failures isolated to their branch."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from pixstream import errors
from pixstream.ops import codec
from pixstream.plan import Plan
from pixstream.render import StepResult, render
from pixstream.settings import DEFAULT_PRESETS
from pixstream.spec import parse_spec
from tests.harness import CONTRACT_SPEC
from tests.unit.conftest import Images

pytestmark = pytest.mark.unit

LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_frames": 100}


def plan_of(raw: dict[str, Any]) -> Plan:
    return Plan.from_spec(parse_spec(raw, presets=DEFAULT_PRESETS, max_steps=16))


def test_contract_example_from_one_decode(images: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real_decode = codec.decode

    def counting_decode(data: bytes, **kwargs: Any) -> codec.Decoded:
        calls.append(kwargs.get("draft"))
        return real_decode(data, **kwargs)

    monkeypatch.setattr(codec, "decode", counting_decode)
    source = images.encode(images.noise((3000, 2000)), "JPEG", quality=90)
    result = render(source, plan_of(CONTRACT_SPEC), **LIMITS)

    assert len(calls) == 1
    assert result.ok
    assert result.source_format == "jpeg"
    assert result.source_size == (3000, 2000)
    assert set(result.outputs) == {"webp", "thumb"}
    webp, thumb = result.outputs["webp"], result.outputs["thumb"]
    assert (webp.format, webp.width, webp.height) == ("webp", 1024, 683)
    assert (thumb.format, thumb.width, thumb.height) == ("jpeg", 256, 171)
    for output in (webp, thumb):
        opened = Image.open(io.BytesIO(output.data))
        assert opened.format == output.format.upper()
        assert opened.size == (output.width, output.height)


def test_a_failing_step_skips_its_descendants_only(images: Images) -> None:
    raw = {
        "steps": [
            {
                "id": "crop",
                "op": "crop",
                "params": {"left": 0, "top": 0, "width": 500, "height": 10},
            },
            {"id": "small", "op": "thumbnail", "params": {"size": 16}, "input": "crop"},
            {"id": "smaller", "op": "grayscale", "input": "small"},
            {"id": "ok", "op": "flip", "params": {"direction": "horizontal"}},
        ]
    }
    result = render(images.encode(images.noise((100, 80)), "PNG"), plan_of(raw), **LIMITS)
    assert set(result.outputs) == {"ok"}
    assert result.outputs["ok"].format == "png"
    assert result.failures["crop"].code == "invalid_params"
    assert "outside the 100x80 image" in result.failures["crop"].message
    assert result.failures["small"].code == "skipped_dependency"
    assert result.failures["smaller"].code == "skipped_dependency"
    assert not result.ok


def test_decode_errors_fail_the_whole_job() -> None:
    with pytest.raises(errors.UnsupportedFormat):
        render(b"%PDF-1.4\n", plan_of(CONTRACT_SPEC), **LIMITS)


def test_animated_source_is_processed_frame_by_frame(images: Images) -> None:
    raw = {
        "steps": [
            {"id": "gif", "op": "resize", "params": {"width": 20}},
            {"id": "anim", "op": "convert", "params": {"format": "webp"}, "input": "gif"},
            {"id": "still", "op": "convert", "params": {"format": "jpeg"}, "input": "gif"},
        ]
    }
    result = render(images.animated_gif(4), plan_of(raw), **LIMITS)
    for step_id, fmt in (("anim", "WEBP"),):
        opened = Image.open(io.BytesIO(result.outputs[step_id].data))
        assert opened.format == fmt
        assert getattr(opened, "n_frames", 1) == 4
        assert opened.size == (20, 15)
    assert result.failures["still"].code == "animation_not_supported"
    assert result.frames == 4


def test_animated_gif_without_convert_stays_gif(images: Images) -> None:
    raw = {"steps": [{"id": "g", "op": "grayscale"}]}
    output = render(images.animated_gif(3), plan_of(raw), **LIMITS).outputs["g"]
    assert output.format == "gif"
    assert getattr(Image.open(io.BytesIO(output.data)), "n_frames", 1) == 3


def test_presets_render(images: Images) -> None:
    source = images.encode(images.noise((1600, 1200)), "JPEG")
    for name, steps in DEFAULT_PRESETS.items():
        result = render(source, plan_of(steps), **LIMITS)
        assert result.ok, (name, result.failures)
    avatar = render(source, plan_of({"preset": "avatar"}), **LIMITS).outputs["avatar"]
    assert (avatar.width, avatar.height) == (256, 256)


def test_each_step_is_reported_as_soon_as_it_is_done(
    images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_step hears of a step before the next one runs (here: before the next encode), in
    plan order, with what the whole render returns."""
    log: list[str] = []
    real_encode = codec.encode

    def logging_encode(*args: Any, **kwargs: Any) -> bytes:
        log.append("encode")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(codec, "encode", logging_encode)
    plan = plan_of(
        {
            "steps": [
                {"id": "small", "op": "resize", "params": {"width": 40}},
                {"id": "png", "op": "convert", "params": {"format": "png"}, "input": "small"},
                {
                    "id": "broken",
                    "op": "crop",
                    "params": {"left": 500, "top": 0, "width": 9, "height": 9},
                },
                {
                    "id": "skipped",
                    "op": "flip",
                    "params": {"direction": "vertical"},
                    "input": "broken",
                },
                {"id": "flipped", "op": "flip", "params": {"direction": "horizontal"}},
            ]
        }
    )
    results: list[StepResult] = []

    def on_step(result: StepResult) -> None:
        results.append(result)
        log.append(result.step)

    source = images.encode(images.marked((80, 60)), "PNG")
    rendered = render(source, plan, **LIMITS, on_step=on_step)

    assert [r.step for r in results] == list(plan.order)
    assert results == [rendered.result(sid) for sid in plan.order]
    # Every output's report follows its own encode at once, before any later step's work.
    assert log == ["small", "broken", "encode", "flipped", "encode", "png", "skipped"]
    by_step = {r.step: r for r in results}
    assert by_step["small"] == StepResult("small")  # intermediate: only its id
    assert by_step["png"].output == rendered.outputs["png"]
    assert by_step["broken"].failure is not None
    assert by_step["skipped"].failure is not None
    assert by_step["skipped"].failure.code == "skipped_dependency"
