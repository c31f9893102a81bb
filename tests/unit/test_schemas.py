"""schemas/ is in sync with the models, and every example is valid and round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pixstream import events, schemas

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schema_files_match_the_models() -> None:
    assert schemas.check(SCHEMAS) == []


def test_check_reports_drift(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert schemas.check(tmp_path) == []
    (tmp_path / "jobspec.schema.json").write_text("{}\n")
    (tmp_path / "old.schema.json").write_text("{}\n")
    (tmp_path / "ops" / "blur.params.schema.json").unlink()
    problems = schemas.check(tmp_path)
    assert len(problems) == 3
    assert any(p.startswith("jobspec.schema.json: differs") for p in problems)
    assert any(p.startswith("ops/blur.params.schema.json: missing") for p in problems)
    assert any(p.startswith("old.schema.json: no model") for p in problems)


def test_every_generated_schema_is_valid_json_schema() -> None:
    for name, schema in schemas.generate().items():
        assert name.endswith(".schema.json")
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("event_type", sorted(events.DATA_MODELS))
def test_example_validates_and_round_trips(event_type: str) -> None:
    example_path = SCHEMAS / "examples" / f"{event_type}.json"
    example = json.loads(example_path.read_text())
    envelope_schema = json.loads((SCHEMAS / "cloudevent.schema.json").read_text())
    data_schema = json.loads((SCHEMAS / f"{event_type}.schema.json").read_text())
    Draft202012Validator(envelope_schema).validate(example)
    Draft202012Validator(data_schema).validate(example["data"])
    assert example["type"] == event_type

    event = events.CloudEvent.parse(example_path.read_bytes())
    data = events.parse_data(event)
    assert isinstance(data, events.DATA_MODELS[event_type])
    assert data.model_dump(mode="json") == example["data"]
    assert events.CloudEvent.parse(event.to_bytes()) == event
