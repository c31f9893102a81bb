"""The OpenAPI document: valid 3.1, generated from the models the handlers answer with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError

from pixstream.ingress.models import JobAccepted, JobLinks, JobView, OutputView, Progress
from pixstream.ingress.openapi import document, schema_for
from pixstream.ingress.routes import request_hash, spec_json
from pixstream.spec import JobSpec


def test_document_shape() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/retry",
        "/v1/operations",
        "/v1/presets",
        "/openapi.json",
        "/asyncapi.json",
        "/health",
        "/metrics",
        "/",
    }
    post = doc["paths"]["/v1/jobs"]["post"]
    assert set(post["responses"]) == {"202", "400", "413", "415", "422", "429", "503"}
    assert {"JobSpec", "StepSpec", "JobView", "Problem", "JobAccepted"} <= set(
        doc["components"]["schemas"]
    )


def test_the_event_stream_is_documented() -> None:
    op = document()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert {"200", "404", "503"} == set(op["responses"])
    assert "Last-Event-ID" in {p["name"] for p in op["parameters"]}


def test_the_retry_is_documented() -> None:
    op = document()["paths"]["/v1/jobs/{job_id}/retry"]["post"]
    assert set(op["responses"]) == {"202", "404", "409", "410", "429", "503"}
    assert op["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RetryAccepted"
    }
    assert "RetryAccepted" in document()["components"]["schemas"]


def test_every_reference_resolves() -> None:
    doc = document()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


def test_component_schemas_are_valid_json_schema() -> None:
    for schema in document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises naming the bad keyword


def test_models_validate_against_their_schemas() -> None:
    accepted = JobAccepted(job_id="abc", links=JobLinks(self_="/v1/jobs/abc"))
    Draft202012Validator(schema_for("JobAccepted")).validate(
        accepted.model_dump(mode="json", by_alias=True)
    )
    now = datetime.now(UTC)
    view = JobView(
        job_id="abc",
        status="completed",
        run=0,
        created_at=now,
        updated_at=now,
        expires_at=now,
        expired=False,
        progress=Progress(steps_total=1, steps_done=1),
        outputs={"t": OutputView(url=None, key="k", format="png", width=1, height=1, bytes=1)},
        errors=[],
        webhook=None,
    )
    validator = Draft202012Validator(schema_for("JobView"))
    validator.validate(view.model_dump(mode="json"))
    with pytest.raises(ValidationError):
        validator.validate({**view.model_dump(mode="json"), "status": "lost"})
    with pytest.raises(ValidationError):
        validator.validate({**view.model_dump(mode="json"), "run": -1})


def test_a_job_shows_its_run() -> None:
    schema = document()["components"]["schemas"]["JobView"]
    assert schema["properties"]["run"]["type"] == "integer"
    assert schema["properties"]["run"]["minimum"] == 0
    assert "run" in schema["required"]
    assert "run" in document()["paths"]["/v1/jobs/{job_id}"]["get"]["summary"]


def test_the_document_is_a_copy() -> None:
    document()["paths"].clear()
    assert document()["paths"]


def test_request_hash_depends_on_bytes_and_parsed_spec() -> None:
    a = JobSpec.model_validate({"steps": [{"id": "t", "op": "thumbnail", "params": {"size": 8}}]})
    same = JobSpec.model_validate(
        {"steps": [{"params": {"size": 8}, "op": "thumbnail", "id": "t", "input": "source"}]}
    )
    assert spec_json(a) == spec_json(same)  # key order and defaults do not matter
    assert request_hash(b"x", spec_json(a)) == request_hash(b"x", spec_json(same))
    assert request_hash(b"y", spec_json(a)) != request_hash(b"x", spec_json(a))
