"""schemas/asyncapi.json is in sync with the models, lists the whole Kafka interface, and is
valid for the official AsyncAPI CLI (installed by `make install` into deploy/asyncapi/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from pixstream import asyncapi, events, redelivery

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
CLI = ROOT / "deploy" / "asyncapi" / "node_modules" / ".bin" / "asyncapi"
CLI_TIMEOUT = 120


def test_file_matches_the_models() -> None:
    assert asyncapi.check(SCHEMAS) == []


def test_check_reports_drift(tmp_path: Path) -> None:
    assert asyncapi.check(tmp_path) == ["asyncapi.json: missing (run `pixstream schemas write`)"]
    asyncapi.write(tmp_path)
    assert asyncapi.check(tmp_path) == []
    (tmp_path / "asyncapi.json").write_text("{}\n")
    assert asyncapi.check(tmp_path)[0].startswith("asyncapi.json: differs")


def test_every_topic_and_message_type_of_the_contract() -> None:
    doc = asyncapi.document()
    channels = doc["channels"]
    addresses = {c["address"] for c in channels.values()}
    assert {"pixstream.jobs", "pixstream.events", "pixstream.dlq", "pixstream.op.{op}"} <= addresses
    assert channels["jobsBatch"]["address"] == "pixstream.jobs.batch"  # batch producers' path
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert set(events.DATA_MODELS) | {"deadLetter"} == names

    def on(channel: str) -> set[str]:
        return {
            _resolve(doc, ref["$ref"])["name"] for ref in channels[channel]["messages"].values()
        }

    assert on("jobs") == {events.JOB_REQUESTED, events.JOB_RETRIED}
    assert on("jobsBatch") == {events.JOB_REQUESTED, events.JOB_RETRIED}
    assert on("events") == {
        events.JOB_REQUESTED,  # the planner's announcement of the accepted job
        events.JOB_RETRIED,
        events.TASK_STARTED,
        events.STEP_COMPLETED,
        events.STEP_FAILED,
        events.JOB_COMPLETED,
        events.JOB_FAILED,
    }
    assert on("dlq") == {"deadLetter"}
    assert on("op") == {events.TASK_REQUESTED}
    assert set(channels["op"]["parameters"]["op"]["enum"]) >= {"resize", "thumbnail", "convert"}


def test_topic_prefix_names_every_address() -> None:
    doc = asyncapi.document("acme")
    assert {c["address"].split(".", 1)[0] for c in doc["channels"].values()} == {"acme"}
    assert doc["channels"]["jobs"]["bindings"]["kafka"]["partitions"] >= 1


def test_payloads_are_the_schema_files() -> None:
    """Each event's `data` is exactly `schemas/<type>.schema.json`, with its `$defs` hoisted."""
    components = asyncapi.document()["components"]["schemas"]
    files = {"cloudevent": "cloudevent.schema.json"}
    files |= {t: f"{t}.schema.json" for t in events.DATA_MODELS}
    for name, file in files.items():
        schema = json.loads((SCHEMAS / file).read_text())
        assert schema.pop("$schema").startswith("https://json-schema.org/")
        for def_name, definition in _pointed_at_components(schema.pop("$defs", {})).items():
            assert components[def_name] == definition, f"{file}: $defs/{def_name}"
        assert components[name] == _pointed_at_components(schema), file


def test_message_examples_are_valid() -> None:
    doc = asyncapi.document()
    for message_id, message in doc["components"]["messages"].items():
        assert message["examples"], message_id
        for example in message["examples"]:
            _validator(doc, f"messages/{message_id}/payload").validate(example["payload"])
            _validator(doc, f"messages/{message_id}/headers").validate(example.get("headers", {}))
        if message_id != "deadLetter":
            example_type = message["examples"][0]["payload"]["type"]
            assert example_type == message["name"]


def test_payload_pins_the_event_type_and_tenant_attribute() -> None:
    doc = asyncapi.document()
    payload = _validator(doc, "messages/jobRequested/payload")
    example = json.loads((SCHEMAS / "examples" / f"{events.JOB_REQUESTED}.json").read_text())
    payload.validate({**example, "pixstreamtenant": "acme"})
    assert not payload.is_valid({**example, "pixstreamtenant": ""})
    assert not payload.is_valid({**example, "type": events.JOB_COMPLETED})
    assert not payload.is_valid({**example, "data": {"job_id": "j"}})


def test_every_header_pixstream_writes_is_documented() -> None:
    written = {
        value
        for name, value in vars(redelivery).items()
        if name.isupper() and isinstance(value, str) and value.startswith("pixstream-")
    }
    schemas = asyncapi.document()["components"]["schemas"]
    documented = set(schemas["RedeliveryHeaders"]["properties"])
    documented |= set(schemas["DeadLetterHeaders"]["properties"])
    assert written == documented


def test_official_cli_validates_the_file(tmp_path: Path) -> None:
    result = _cli_validate(SCHEMAS / "asyncapi.json", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_official_cli_rejects_a_broken_document(tmp_path: Path) -> None:
    """The CLI check is not vacuous: an operation sending a message its channel lacks fails."""
    doc = asyncapi.document()
    doc["operations"]["sendEvents"]["messages"].append(
        {"$ref": "#/channels/events/messages/taskRequested"}
    )
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    result = _cli_validate(broken, tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "invalid-ref" in result.stdout + result.stderr


def _cli_validate(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    if not CLI.exists():
        pytest.fail(f"the AsyncAPI CLI is not installed at {CLI}: run `make install`")
    # The CLI sends usage metrics unless its config file says no; keep it, and anything else
    # the CLI writes to a home directory, in the test's own folder.
    config = home / "asyncapi-analytics.json"
    config.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true"}))
    env = {**os.environ, "HOME": str(home), "ASYNCAPI_METRICS_CONFIG_PATH": str(config)}
    return subprocess.run(
        [str(CLI), "validate", str(path), "--fail-severity", "warn"],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _pointed_at_components(schema: dict[str, Any]) -> dict[str, Any]:
    text = re.sub(r'"#/\$defs/', '"#/components/schemas/', json.dumps(schema))
    pointed: dict[str, Any] = json.loads(text)
    return pointed


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def _validator(doc: dict[str, Any], pointer: str) -> Draft7Validator:
    """A validator of the schema at `#/components/<pointer>`: AsyncAPI schemas are a superset
    of JSON Schema draft 7, and their references point into the document's components."""
    schema = {"$ref": f"#/components/{pointer}", "components": doc["components"]}
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)
