"""Content keys of the render-once index, on values: what makes two outputs the same."""

from __future__ import annotations

from typing import Any

import pytest

from pixstream.contentkeys import (
    canonical_chain,
    chain_key,
    engine_version,
    output_keys,
    source_digest,
    steps_for,
)
from pixstream.plan import Plan
from pixstream.spec import JobSpec, StepSpec

pytestmark = pytest.mark.unit


def plan(*steps: dict[str, Any]) -> Plan:
    return Plan.from_spec(JobSpec(steps=[StepSpec.model_validate(s) for s in steps]))


WEB = {"id": "web", "op": "resize", "params": {"width": 1024}}
WEBP = {"id": "webp", "op": "convert", "params": {"format": "webp"}, "input": "web"}
THUMB = {"id": "thumb", "op": "thumbnail", "params": {"size": 256}}


def key_of(p: Plan, step: str, tenant: str = "acme", source: bytes = b"img") -> str:
    return output_keys(p, tenant, source_digest(source))[step].chain_key


def test_params_are_compared_as_parsed_and_ids_do_not_count() -> None:
    spelled_out = plan(
        {"id": "a", "op": "resize", "params": {"width": 1024, "fit": "contain", "upscale": False}},
        {"id": "b", "op": "convert", "params": {"format": "webp"}, "input": "a"},
    )
    assert key_of(plan(WEB, WEBP), "webp") == key_of(spelled_out, "b")


def test_the_chain_is_the_path_from_the_source() -> None:
    p = plan(WEB, WEBP, THUMB)
    assert [link["op"] for link in canonical_chain(p, "webp")] == ["resize", "convert"]
    # A sibling branch is not part of an output's chain.
    assert key_of(p, "webp") == key_of(plan(WEB, WEBP), "webp")
    assert key_of(p, "thumb") == key_of(plan(THUMB), "thumb")


@pytest.mark.parametrize(
    "other",
    [
        [{"id": "web", "op": "resize", "params": {"width": 1000}}, WEBP],
        [WEB, {**WEBP, "params": {"format": "webp", "quality": 50}}],
        [WEB, {**WEBP, "params": {"format": "png"}}],
    ],
)
def test_other_params_are_another_output(other: list[dict[str, Any]]) -> None:
    assert key_of(plan(WEB, WEBP), "webp") != key_of(plan(*other), "webp")


def test_key_holds_tenant_source_and_engine() -> None:
    p = plan(WEB, WEBP)
    key = output_keys(p, "acme", source_digest(b"img"))["webp"]
    assert key.tenant == "acme"
    assert key.source_sha256 == source_digest(b"img") != source_digest(b"img2")
    assert key.engine == engine_version()
    assert "pillow/" in key.engine
    assert "pixstream/" in key.engine
    assert key.chain_key == chain_key(list(key.chain))


def test_steps_for_keeps_only_the_paths_of_the_outputs_asked() -> None:
    p = plan(WEB, WEBP, THUMB)
    assert [s.id for s in steps_for(p, {"webp"})] == ["web", "webp"]
    assert [s.id for s in steps_for(p, {"thumb"})] == ["thumb"]
    assert steps_for(p, set()) == []
