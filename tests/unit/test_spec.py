"""Job spec validation: every refusal names the step and the field."""

from __future__ import annotations

from typing import Any

import pytest

from pixstream import errors
from pixstream.settings import DEFAULT_PRESETS
from pixstream.spec import JobSpec, find_cycle, parse_spec
from tests.harness import CONTRACT_SPEC

pytestmark = pytest.mark.unit


def parse(raw: object, max_steps: int = 16) -> JobSpec:
    return parse_spec(raw, presets=DEFAULT_PRESETS, max_steps=max_steps)


def step(sid: str, op: str = "grayscale", input: str = "source", **params: Any) -> dict[str, Any]:
    return {"id": sid, "op": op, "params": params, "input": input}


def test_contract_example_is_accepted() -> None:
    spec = parse({**CONTRACT_SPEC, "webhook_url": "https://example.com/hooks/pixstream"})
    assert [s.id for s in spec.steps] == ["web", "webp", "thumb"]
    assert spec.steps[2].input == "source"
    assert spec.webhook_url == "https://example.com/hooks/pixstream"


def test_preset_expands_to_its_steps_and_keeps_the_webhook() -> None:
    spec = parse({"preset": "web", "webhook_url": "https://example.com/h"})
    assert [s.op for s in spec.steps] == ["resize", "convert"]
    assert spec.webhook_url == "https://example.com/h"


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        ({"preset": "nope"}, errors.InvalidSpec, "preset: unknown preset 'nope'"),
        ({"preset": "web", "steps": []}, errors.InvalidSpec, "steps: not allowed with 'preset'"),
        (
            {"steps": [step("a", input="b"), step("b", input="a")]},
            errors.InvalidSpec,
            "steps 'b' -> 'a' -> 'b' form a cycle",
        ),
        ({"steps": [step("a", input="a")]}, errors.InvalidSpec, "step 'a': a step cannot take"),
        (
            {"steps": [step("a", input="ghost")]},
            errors.InvalidSpec,
            "step 'a': input 'ghost' is neither 'source' nor a step id",
        ),
        (
            {"steps": [step("a", op="explode")]},
            errors.UnknownOperation,
            "step 'a': unknown operation 'explode'",
        ),
        (
            {"steps": [step("a"), step("a")]},
            errors.InvalidSpec,
            "step 'a': id is used by more than one step",
        ),
        (
            {"steps": [step(f"s{i}") for i in range(17)]},
            errors.InvalidSpec,
            "steps: 17 steps; at most 16",
        ),
        (
            {"steps": [step("thumb", op="thumbnail", size=0)]},
            errors.InvalidParams,
            "step 'thumb': params.size: Input should be greater than or equal to 1",
        ),
        (
            {"steps": [step("r", op="resize", width=10, fit="squash")]},
            errors.InvalidParams,
            "step 'r': params.fit: Input should be",
        ),
        ({"steps": [step("source")]}, errors.InvalidSpec, "step 'source': id: Value error"),
        ({"steps": [step("bad id!")]}, errors.InvalidSpec, "step 'bad id!': id: String should"),
        (
            {"steps": [{"id": "x", "op": "flip", "colour": 1}]},
            errors.InvalidSpec,
            "step 'x': colour: Extra inputs",
        ),
        ({"steps": []}, errors.InvalidSpec, "steps: List should have at least 1 item"),
        ({"steps": [step("a")], "extra": 1}, errors.InvalidSpec, "extra: Extra inputs"),
        ([1, 2], errors.InvalidSpec, "spec: Input should be a valid dictionary"),
    ],
)
def test_bad_specs_are_refused_with_a_precise_message(
    raw: object, error: type[errors.PermanentError], message: str
) -> None:
    with pytest.raises(error) as info:
        parse(raw)
    assert message in info.value.message
    assert info.value.code == error.code


def test_cycle_deep_in_a_chain_names_only_its_steps() -> None:
    with pytest.raises(errors.InvalidSpec) as info:
        parse(
            {
                "steps": [
                    step("root"),
                    step("x", input="z"),
                    step("y", input="x"),
                    step("z", input="y"),
                ]
            }
        )
    assert "'x'" in info.value.message
    assert "'root'" not in info.value.message


def test_find_cycle() -> None:
    assert find_cycle({"a": "source", "b": "a"}) == []
    assert sorted(find_cycle({"a": "b", "b": "c", "c": "a", "d": "a"})) == ["a", "b", "c"]
