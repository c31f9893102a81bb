"""The JSON Schemas in `schemas/`, generated from the pydantic models, and their drift check.

`pixstream schemas write` calls write(); a unit test calls check() so the files never drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixstream.events import DATA_MODELS, CloudEvent
from pixstream.ops import OPERATIONS
from pixstream.spec import JobSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate() -> dict[str, dict[str, Any]]:
    """Relative file name -> JSON Schema, for every file `schemas/` must hold."""
    files: dict[str, dict[str, Any]] = {}
    for type_, model in DATA_MODELS.items():
        files[f"{type_}.schema.json"] = _document(model.model_json_schema(), f"{type_} data")
    files["cloudevent.schema.json"] = _document(
        CloudEvent.model_json_schema(), "CloudEvents 1.0 structured JSON envelope"
    )
    files["jobspec.schema.json"] = _document(JobSpec.model_json_schema(), "job spec")
    for name, op in OPERATIONS.items():
        files[f"ops/{name}.params.schema.json"] = _document(
            op.params_schema(), f"params of the {name} operation"
        )
    return files


def _document(schema: dict[str, Any], description: str) -> dict[str, Any]:
    schema.setdefault("description", description)
    return {"$schema": DIALECT, **schema}


def render(schema: dict[str, Any]) -> str:
    """The file text: stable key order and a final newline, so diffs stay readable."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every schema file under `directory`; returns the paths written."""
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path) -> list[str]:
    """One message per file that is missing, stale or no longer generated; [] when in sync."""
    expected = generate()
    problems = []
    for name, schema in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing (run `pixstream schemas write`)")
        elif path.read_text(encoding="utf-8") != render(schema):
            problems.append(f"{name}: differs from the models (run `pixstream schemas write`)")
    for path in sorted(directory.rglob("*.schema.json")):
        name = path.relative_to(directory).as_posix()
        if name not in expected:
            problems.append(f"{name}: no model generates it any more (delete it)")
    return problems
