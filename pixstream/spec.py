"""The job spec: steps forming a DAG over the source image, and its full validation.

`parse_spec` is the one gate every spec passes (HTTP and Kafka alike); its messages name the
step and the field so a 422 says exactly what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixstream import errors
from pixstream.ops import OPERATIONS

SOURCE = "source"
INTERACTIVE: Final = "interactive"
BATCH: Final = "batch"
Priority = Literal["interactive", "batch"]
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
StepId = Annotated[str, Field(pattern=ID_PATTERN)]


class StepSpec(BaseModel):
    """One step: apply `op` with `params` to the source or to another step's result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StepId
    op: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    input: str = Field(default=SOURCE, max_length=64, description="'source' or a step id")

    @field_validator("id")
    @classmethod
    def _not_source(cls, value: str) -> str:
        if value == SOURCE:
            raise ValueError(f"'{SOURCE}' is reserved for the uploaded image")
        return value


class JobSpec(BaseModel):
    """The steps of a job and where to report its end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[StepSpec] = Field(min_length=1)
    webhook_url: str | None = Field(default=None, max_length=2048)
    priority: Priority = Field(
        default=INTERACTIVE,
        description="`batch` work waits on topics of its own, taken only while the "
        "interactive ones have nothing waiting (backfills never delay new uploads).",
    )


def loads(data: bytes) -> object:
    """The JSON value of a spec document; InvalidSpec for anything that is not JSON text.

    Deep nesting is refused too: 64 KB of `[` makes the JSON parser raise RecursionError,
    which is the sender's fault like any other unparsable spec (a 422, never a 500).
    """
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise errors.InvalidSpec(f"spec: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise errors.InvalidSpec(
            f"spec: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise errors.InvalidSpec("spec: nested too deeply to be a job spec") from exc
    except ValueError as exc:  # what else json refuses, e.g. an integer too long to convert
        raise errors.InvalidSpec(f"spec: not valid JSON ({exc})") from exc


def parse_spec(raw: object, *, presets: Mapping[str, Mapping[str, Any]], max_steps: int) -> JobSpec:
    """Validate a request's spec (`{"steps": [...]}` or `{"preset": name}`) completely."""
    if isinstance(raw, Mapping) and "preset" in raw:
        raw = _expand_preset(raw, presets)
    steps = raw.get("steps") if isinstance(raw, Mapping) else None
    if isinstance(steps, list) and len(steps) > max_steps:
        raise errors.InvalidSpec(f"steps: {len(steps)} steps; at most {max_steps} are allowed")
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise errors.InvalidSpec(_describe_spec_errors(exc, raw)) from exc
    validate_steps(spec.steps)
    return spec


def validate_steps(steps: list[StepSpec]) -> None:
    """Check ids, inputs, acyclicity, ops and params, and that no step reads a metadata step
    (analyze is a leaf); raise the first problem found."""
    ids: set[str] = set()
    for step in steps:
        if step.id in ids:
            raise errors.InvalidSpec(f"step '{step.id}': id is used by more than one step")
        ids.add(step.id)
    for step in steps:
        if step.input != SOURCE and step.input not in ids:
            raise errors.InvalidSpec(
                f"step '{step.id}': input '{step.input}' is neither 'source' nor a step id"
            )
        if step.input == step.id:
            raise errors.InvalidSpec(f"step '{step.id}': a step cannot take itself as input")
    cycle = find_cycle({step.id: step.input for step in steps})
    if cycle:
        path = " -> ".join(f"'{s}'" for s in [*cycle, cycle[0]])
        raise errors.InvalidSpec(f"steps {path} form a cycle; inputs must lead back to 'source'")
    for step in steps:
        op = OPERATIONS.get(step.op)
        if op is None:
            raise errors.UnknownOperation(
                f"step '{step.id}': unknown operation '{step.op}'; "
                f"known: {', '.join(sorted(OPERATIONS))}"
            )
        try:
            op.parse(step.params)
        except errors.InvalidParams as exc:
            raise errors.InvalidParams(f"step '{step.id}': {exc.message}") from exc
    ops = {step.id: step.op for step in steps}
    for step in steps:
        if step.input != SOURCE and not OPERATIONS[ops[step.input]].makes_image:
            raise errors.InvalidSpec(
                f"step '{step.id}': input '{step.input}' is an {ops[step.input]} step, which "
                "reports metadata and makes no image; take 'source' or an image step as input"
            )


def find_cycle(inputs: Mapping[str, str]) -> list[str]:
    """A cycle among steps (each step has one input), in input order; [] when there is none."""
    done: set[str] = set()
    for start in inputs:
        path: list[str] = []
        seen: set[str] = set()
        node = start
        while node in inputs and node not in done:
            if node in seen:
                return path[path.index(node) :][::-1]
            seen.add(node)
            path.append(node)
            node = inputs[node]
        done.update(path)
    return []


def _expand_preset(raw: Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]]) -> object:
    extra = set(raw) - {"preset", "webhook_url", "priority"}
    if extra:
        raise errors.InvalidSpec(
            f"{', '.join(sorted(extra))}: not allowed with 'preset' (a preset names the steps)"
        )
    name = raw["preset"]
    if not isinstance(name, str) or name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise errors.InvalidSpec(f"preset: unknown preset {name!r}; known: {known}")
    expanded = dict(presets[name])
    if raw.get("webhook_url") is not None:
        expanded["webhook_url"] = raw["webhook_url"]
    if "priority" in raw:
        expanded["priority"] = raw["priority"]
    return expanded


def _describe_spec_errors(exc: ValidationError, raw: object) -> str:
    """Name the step by its id when the error is inside one (`step 'thumb': id: ...`)."""
    steps = raw.get("steps") if isinstance(raw, Mapping) else None
    parts = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        prefix = ""
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            index = loc[1]
            step = steps[index] if isinstance(steps, list) and index < len(steps) else None
            step_id = step.get("id") if isinstance(step, Mapping) else None
            prefix = f"step '{step_id}': " if isinstance(step_id, str) else f"steps[{index}]: "
            loc = loc[2:]
        where = ".".join(str(item) for item in loc) or "spec"
        parts.append(f"{prefix}{where}: {error['msg']}")
    return "; ".join(parts)


__all__ = [
    "ID_PATTERN",
    "SOURCE",
    "JobSpec",
    "StepSpec",
    "find_cycle",
    "loads",
    "parse_spec",
    "validate_steps",
]
