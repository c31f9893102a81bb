"""The DAG planner: structure, formats, object keys and draft sizes."""

from __future__ import annotations

from typing import Any

import pytest

from pixstream.plan import Plan
from pixstream.spec import JobSpec, StepSpec

pytestmark = pytest.mark.unit


def plan(*steps: tuple[str, str, dict[str, Any], str]) -> Plan:
    return Plan.from_spec(
        JobSpec(steps=[StepSpec(id=i, op=o, params=p, input=s) for i, o, p, s in steps])
    )


CONTRACT = plan(
    ("web", "resize", {"width": 1024}, "source"),
    ("webp", "convert", {"format": "webp", "quality": 80}, "web"),
    ("thumb", "thumbnail", {"size": 256}, "source"),
)


def test_structure_of_the_contract_example() -> None:
    assert CONTRACT.roots == ("web", "thumb")
    assert CONTRACT.children("source") == ("web", "thumb")
    assert CONTRACT.children("web") == ("webp",)
    assert CONTRACT.children("thumb") == ()
    assert CONTRACT.outputs == ("webp", "thumb")
    assert CONTRACT.path("webp") == ["web", "webp"]


def test_order_is_topological_even_when_the_spec_is_not() -> None:
    p = plan(
        ("c", "grayscale", {}, "b"),
        ("b", "flip", {"direction": "vertical"}, "a"),
        ("a", "blur", {"radius": 1}, "source"),
        ("d", "grayscale", {}, "a"),
    )
    assert p.order.index("a") < p.order.index("b") < p.order.index("c")
    assert p.order.index("a") < p.order.index("d")
    assert set(p.order) == {"a", "b", "c", "d"}
    assert p.outputs == ("c", "d")
    assert p.roots == ("a",)


def test_output_format() -> None:
    assert CONTRACT.output_format("webp", "jpeg") == "webp"
    assert CONTRACT.output_format("thumb", "jpeg") == "jpeg"
    assert CONTRACT.output_format("thumb", "tiff") == "png"
    assert CONTRACT.output_format("thumb", "gif") == "png"
    assert CONTRACT.output_format("thumb", "gif", animated=True) == "gif"
    assert CONTRACT.output_format("thumb", "avif") == "avif"
    nearest = plan(
        ("a", "convert", {"format": "png"}, "source"),
        ("b", "convert", {"format": "avif", "quality": 40}, "a"),
        ("c", "blur", {"radius": 1}, "b"),
    )
    encoding = nearest.encoding("c", "jpeg")
    assert (encoding.format, encoding.quality) == ("avif", 40)


def test_keys() -> None:
    assert Plan.output_key("job-1", "thumb", "jpeg") == "processed/job-1/thumb.jpg"
    assert Plan.output_key("job-1", "webp", "webp") == "processed/job-1/webp.webp"
    assert Plan.raw_key("job-1", "jpg") == "raw/job-1/source.jpg"
    assert Plan.raw_key("job-1", "jpeg") == "raw/job-1/source.jpg"


def test_draft_size_is_the_largest_root_need() -> None:
    assert CONTRACT.draft_size(4000, 3000) == (1024, 768)


def test_draft_size_looks_through_passthrough_ops() -> None:
    p = plan(
        ("g", "grayscale", {}, "source"),
        ("small", "thumbnail", {"size": 300}, "g"),
    )
    assert p.draft_size(4000, 3000) == (300, 225)


@pytest.mark.parametrize(
    "steps",
    [
        [("c", "crop", {"left": 0, "top": 0, "width": 10, "height": 10}, "source")],
        [("c", "convert", {"format": "png"}, "source")],
        [("t", "thumbnail", {"size": 64}, "source"), ("b", "blur", {"radius": 2}, "source")],
        [("g", "grayscale", {}, "source"), ("b", "blur", {"radius": 2}, "g")],
    ],
)
def test_draft_size_is_none_when_a_path_needs_full_resolution(
    steps: list[tuple[str, str, dict[str, Any], str]],
) -> None:
    assert plan(*steps).draft_size(4000, 3000) is None
