"""The AsyncAPI 3.0 document of the Kafka interface, built from the same models as `schemas/`.

The payload schemas are the very schemas `pixstream schemas write` puts in `schemas/`: each
file's `$defs` are hoisted into `components.schemas`, because AsyncAPI tools resolve `$ref`
against the whole document rather than the schema that holds it; the document then stands
alone when served at `GET /asyncapi.json`. A unit test keeps `schemas/asyncapi.json` in sync
and validates it with the official AsyncAPI CLI.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

from pixstream import __version__, events, redelivery, schemas
from pixstream.ops import OPERATIONS
from pixstream.settings import Settings
from pixstream.spec import ID_PATTERN
from pixstream.topics import TopicConfig, load_topics

FILE_NAME: Final = "asyncapi.json"
DEFAULT_PREFIX: Final = "pixstream"
EXAMPLES: Final = Path(__file__).resolve().parents[1] / "schemas" / "examples"
KAFKA_BINDING: Final = "0.5.0"
CLOUDEVENTS_JSON: Final = "application/cloudevents+json"
TENANT_ATTRIBUTE: Final = "pixstreamtenant"

SCHEMA_REF: Final = "#/components/schemas/{name}"
ENVELOPE: Final = "cloudevent"  # components.schemas name of cloudevent.schema.json

DEAD_LETTER: Final = "deadLetter"  # the one message that is not a CloudEvent type

# The public channels: id -> (the declared topic name, what it is for).
_PUBLIC: Final = {
    "jobs": ("jobs", "Job requests: the ingress and any other system produce here."),
    "jobsBatch": (
        "jobs.batch",
        'Batch job requests (`"priority": "batch"`): the faster path for a system that '
        "sends many at once (a backfill). The ingress sends its batch jobs here. They are "
        "planned only while the jobs topic and the op topics have nothing waiting, so an "
        "interactive request is not planned after the whole burst, as it is when the burst "
        "goes to the jobs topic (which still takes batch requests and plans them in arrival "
        "order). A request's `priority`, not its topic, decides which op topics its tasks "
        "wait on.",
    ),
    "events": ("events", "Job lifecycle events, in order per job."),
    "dlq": ("dlq", "Dead letters: records that could not be processed."),
}
_LIFECYCLE: Final = [
    events.JOB_REQUESTED,  # the planner's announcement of an accepted job
    events.JOB_RETRIED,  # the planner's announcement of a retry's run
    events.TASK_STARTED,
    events.STEP_COMPLETED,
    events.STEP_FAILED,
    events.JOB_COMPLETED,
    events.JOB_FAILED,
]
_CHANNEL_MESSAGES: Final = {
    "jobs": [events.JOB_REQUESTED, events.JOB_RETRIED],
    "jobsBatch": [events.JOB_REQUESTED, events.JOB_RETRIED],
    "events": _LIFECYCLE,
    "dlq": [DEAD_LETTER],
    "op": [events.TASK_REQUESTED],
    # What PixStream consumes, and so may park for a retry.
    "retry": [events.TASK_REQUESTED, *_LIFECYCLE],
}

# Header name -> (pattern or None, description). Kafka header values are bytes; PixStream's
# are UTF-8 text, so each is described as a string.
_REDELIVERY_HEADERS: Final = {
    redelivery.ATTEMPT: (
        r"^[0-9]+$",
        "How many times this record failed transiently before this delivery.",
    ),
    redelivery.ORIGIN_TOPIC: (None, "The topic the record first appeared on."),
    redelivery.ORIGIN_PARTITION: (r"^-?[0-9]+$", "Its partition there."),
    redelivery.ORIGIN_OFFSET: (r"^-?[0-9]+$", "Its offset there."),
    redelivery.NOT_BEFORE: (
        r"^[0-9]+(\.[0-9]+)?$",
        "Unix time in seconds before which the relay does not send the record back.",
    ),
    redelivery.REPLAY_OF: (
        r"^dlq:[0-9]+:[0-9]+$",
        "Set by `pixstream dlq replay`: the dead letter (partition:offset) this record re-drives.",
    ),
    redelivery.REDRIVE: (
        r"^[0-9]+$",
        "Set by the reconciler on a job.requested it sends again for a stalled job (how many "
        "times so far): the job id is already PixStream's, so it is not claimed again.",
    ),
}
_DEAD_LETTER_HEADERS: Final = {
    redelivery.DLQ_TOPIC: (None, "The topic the record was consumed from (before any retry)."),
    redelivery.DLQ_PARTITION: (r"^-?[0-9]+$", "Its partition."),
    redelivery.DLQ_OFFSET: (r"^-?[0-9]+$", "Its offset."),
    redelivery.DLQ_ERROR_CLASS: (
        None,
        "The error's class, `module.QualifiedName` (for example `pixstream.errors.InvalidEvent`).",
    ),
    redelivery.DLQ_ERROR_MESSAGE: (None, "The error's message, at most 2000 characters."),
    redelivery.DLQ_ERROR_CODE: (
        r"^[a-z_]+$",
        "PixStream's error code, when the error has one (for example `job_id_conflict`: a "
        "job.requested whose job_id exists for another request).",
    ),
    redelivery.DLQ_ATTEMPTS: (r"^[0-9]+$", "How many attempts were made."),
    redelivery.DLQ_TIME: (None, "When it was dead-lettered (ISO 8601, UTC)."),
    redelivery.DLQ_TRUNCATED: (
        r"^[0-9]+$",
        "Only when the value had to be cut to fit the topic: the original size in bytes. The "
        "whole value stays at the original topic, partition and offset until its retention.",
    ),
}
_OPTIONAL_DEAD_LETTER_HEADERS: Final = {redelivery.DLQ_TRUNCATED, redelivery.DLQ_ERROR_CODE}


def document(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """The AsyncAPI document for topics named `<prefix>.<name>` (a fresh copy each call)."""
    return copy.deepcopy(_document(prefix))


def write(directory: Path) -> Path:
    """Write `asyncapi.json` (default topic prefix) under `directory`; returns its path."""
    path = directory / FILE_NAME
    path.write_text(schemas.render(document()), encoding="utf-8")
    return path


def check(directory: Path) -> list[str]:
    """One message when `asyncapi.json` is missing or stale; [] when in sync."""
    path = directory / FILE_NAME
    if not path.exists():
        return [f"{FILE_NAME}: missing (run `pixstream schemas write`)"]
    if path.read_text(encoding="utf-8") != schemas.render(document()):
        return [f"{FILE_NAME}: differs from the models (run `pixstream schemas write`)"]
    return []


@cache
def _document(prefix: str) -> dict[str, Any]:
    # Settings are built without reading the environment: the document describes the declared
    # topics (topics/topics.toml) under `prefix`, not this machine's configuration.
    topics = {t.name: t for t in load_topics(Settings.model_construct(topic_prefix=prefix))}
    channels = {
        channel: _public_channel(channel, topics[f"{prefix}.{name}"], description)
        for channel, (name, description) in _PUBLIC.items()
    }
    channels["op"] = _op_channel(prefix)
    channels["retry"] = _retry_channel(prefix)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "PixStream Kafka interface",
            "version": __version__,
            "description": (
                "Streaming image processing on Kafka. Send a `pixstream.job.requested` "
                f"CloudEvent to `{prefix}.jobs` (key: the job id; many batch jobs at once: "
                f"`{prefix}.jobs.batch`) and follow the job on `{prefix}.events`; what cannot "
                f"be processed lands in `{prefix}.dlq`. Every "
                "value is a CloudEvents 1.0 structured-mode JSON event whose `data` has a JSON "
                "Schema in `schemas/` (the same schemas as `components.schemas` here). Topic "
                f"names are `<PIXSTREAM_TOPIC_PREFIX>.<name>`; this document uses `{prefix}`."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [
                {"name": "public", "description": "Channels and messages other systems may use."},
                {"name": "internal", "description": "PixStream's own plumbing, for operators."},
            ],
        },
        "defaultContentType": CLOUDEVENTS_JSON,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local stack of `pixstream stack up` (`make up`); elsewhere "
                "the broker is PIXSTREAM_KAFKA_BOOTSTRAP.",
            }
        },
        "channels": channels,
        "operations": _operations(),
        "components": {
            "schemas": _schemas(),
            "messages": _messages(prefix),
            "correlationIds": {
                "jobId": {
                    "description": "The job id: also the record key.",
                    "location": "$message.payload#/data/job_id",
                }
            },
        },
    }


# -- channels ---------------------------------------------------------------------------------
def _public_channel(channel: str, topic: TopicConfig, description: str) -> dict[str, Any]:
    return {
        "address": topic.name,
        "title": topic.name,
        "description": description,
        "messages": _channel_messages(channel),
        "tags": [{"name": "public"}],
        "bindings": {"kafka": {**_topic_binding(topic), "bindingVersion": KAFKA_BINDING}},
    }


def _op_channel(prefix: str) -> dict[str, Any]:
    return {
        "address": f"{prefix}.op.{{op}}",
        "title": f"{prefix}.op.<op>",
        "description": "Internal: one topic per operation, so each op scales on its own "
        "partitions and consumers. The planner sends each root step (and its chain) to the "
        "topic of the step's op; a batch job's to `<address>.batch`, taken only while the "
        "op topics have nothing waiting.",
        "parameters": {
            "op": {"enum": sorted(OPERATIONS), "description": "The first step's operation."}
        },
        "messages": _channel_messages("op"),
        "tags": [{"name": "internal"}],
    }


def _retry_channel(prefix: str) -> dict[str, Any]:
    return {
        "address": f"{prefix}.retry.{{delay}}",
        "title": f"{prefix}.retry.<delay>",
        "description": "Internal: a record that failed transiently waits here, unchanged but for "
        "the redelivery headers, until its `pixstream-not-before`; the relay then sends it back "
        "to its origin topic. One topic per fixed delay keeps each in due order.",
        "parameters": {
            "delay": {
                "enum": [tier.name.removeprefix("retry.") for tier in redelivery.TIERS],
                "description": "The wait: the first retry waits the shortest.",
            }
        },
        "messages": _channel_messages("retry"),
        "tags": [{"name": "internal"}],
    }


def _topic_binding(topic: TopicConfig) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, value in topic.config.items():
        if name == "cleanup.policy":
            config[name] = value.split(",")
        elif name.endswith((".ms", ".bytes")):
            config[name] = int(value)
        else:
            config[name] = value
    return {
        "partitions": topic.partitions,
        "replicas": topic.replication,
        "topicConfiguration": config,
    }


# -- operations -------------------------------------------------------------------------------
def _operations() -> dict[str, Any]:
    """What PixStream does on each channel; every operation carries all its channel's messages."""
    table = [
        (
            "receiveJobRequests",
            "receive",
            "jobs",
            "The planner validates each request, checks its source and plans its steps. An "
            "invalid request with a job id fails the job (`pixstream.job.failed`); one without "
            "is dead-lettered. A `pixstream.job.retried` is planned alike: announced on the "
            "events topic, then one task with only the steps the retry runs.",
        ),
        (
            "receiveBatchJobRequests",
            "receive",
            "jobsBatch",
            "The planner plans these as it plans the jobs topic's, one at a time per worker "
            "and only while the jobs topic and the op topics have nothing waiting for it.",
        ),
        (
            "sendJobRequests",
            "send",
            "jobs",
            "The ingress publishes a `pixstream.job.requested` for every accepted "
            "`POST /v1/jobs`, and a `pixstream.job.retried` for every accepted "
            "`POST /v1/jobs/{id}/retry` (other systems retry through that route, which checks "
            "that the job failed and that its source is retained). Those of a batch job go "
            "to the batch jobs topic instead.",
        ),
        (
            "sendBatchJobRequests",
            "send",
            "jobsBatch",
            "The ingress publishes here what it would publish to the jobs topic for a job of "
            '`"priority": "batch"`: its `pixstream.job.requested` and the '
            "`pixstream.job.retried` of each of its retries.",
        ),
        (
            "sendTasks",
            "send",
            "op",
            "The planner sends the work of each root step to its op's topic.",
        ),
        (
            "receiveTasks",
            "receive",
            "op",
            "Op workers (`pixstream worker --ops ...`) run the steps and publish their events.",
        ),
        (
            "sendEvents",
            "send",
            "events",
            "Each step's event when it finishes, then one terminal job event per run. A retry "
            "starts a new run: its `pixstream.job.retried` comes first, and its events carry "
            "`data.run` and ids of their own (`<job>.r<run>.job.failed`), so the retry ends with "
            "one new terminal event. Delivery is at least once: deduplicate on the CloudEvent "
            "id, which a redelivery repeats.",
        ),
        (
            "receiveEvents",
            "receive",
            "events",
            "The tracker decides when a job is done, the recorder writes PostgreSQL, the notifier "
            "sends webhooks. Other systems may consume this topic too.",
        ),
        (
            "sendDeadLetters",
            "send",
            "dlq",
            "A record that cannot be processed, or whose retries are spent, is copied here with "
            "its original key and value and headers saying where it came from and why.",
        ),
        (
            "receiveDeadLetters",
            "receive",
            "dlq",
            "`pixstream dlq list` reads them; `pixstream dlq replay` re-drives them, each at "
            "most once, to the topic they came from.",
        ),
        (
            "parkForRetry",
            "send",
            "retry",
            "A transiently failed record is parked with the redelivery headers set.",
        ),
        (
            "relayRetries",
            "receive",
            "retry",
            "The relay waits until a parked record is due and sends it back to its origin.",
        ),
    ]
    return {
        op_id: {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{_id(m)}"}
                for m in _CHANNEL_MESSAGES[channel]
            ],
            "tags": [{"name": "public" if channel in _PUBLIC else "internal"}],
        }
        for op_id, action, channel, summary in table
    }


# -- messages ---------------------------------------------------------------------------------
def _messages(prefix: str) -> dict[str, Any]:
    messages = {_id(type_): _event_message(type_) for type_ in events.DATA_MODELS}
    messages[DEAD_LETTER] = _dead_letter_message(prefix)
    return messages


def _event_message(type_: str) -> dict[str, Any]:
    model = events.DATA_MODELS[type_]
    internal = type_ == events.TASK_REQUESTED
    data: dict[str, Any] = {
        "type": {"const": type_},
        "data": {"$ref": SCHEMA_REF.format(name=type_)},
    }
    description = (
        f"{_first_line(model.__doc__)} A CloudEvent of type `{type_}` whose `data` is "
        f"`schemas/{type_}.schema.json`."
    )
    if type_ == events.JOB_REQUESTED:
        data[TENANT_ATTRIBUTE] = {
            "type": "string",
            "minLength": 1,
            "description": "CloudEvents extension attribute: the tenant the job belongs to "
            "(absent: `anonymous`). Kafka's ACLs decide who may produce; PixStream trusts it.",
        }
        description += (
            f" It may carry the `{TENANT_ATTRIBUTE}` extension attribute. A `job_id` that "
            "already exists with a different request is dead-lettered (`job_id_conflict`); "
            "the same request again is a harmless duplicate."
        )
    if type_ == events.JOB_RETRIED:
        description += (
            " Published by the ingress (through its outbox) for `POST /v1/jobs/{id}/retry`, "
            "with the job's tenant in `pixstreamtenant`; the planner announces it on the events "
            "topic before the run's task, so consumers see the run open before its results."
        )
    if type_ == events.TASK_STARTED:
        description += (
            " Published by the op agent as it takes the task, before any of the task's step "
            "results; each `pixstream.step.completed` or `pixstream.step.failed` then follows "
            "as soon as its step is done, and the job's terminal event after the last. A job "
            "whose every output is retained for its tenant (render once) gets no task: the "
            "planner reports its steps, copies of the earlier outputs, right after "
            "`pixstream.job.requested`, and no `pixstream.task.started` is published."
        )
    return {
        "name": type_,
        "title": type_.removeprefix("pixstream."),
        "summary": _first_line(model.__doc__),
        "description": description,
        "contentType": CLOUDEVENTS_JSON,
        "headers": {"$ref": SCHEMA_REF.format(name="RedeliveryHeaders")},
        "payload": {
            "allOf": [
                {"$ref": SCHEMA_REF.format(name=ENVELOPE)},
                {"type": "object", "required": ["type", "data"], "properties": data},
            ]
        },
        "correlationId": {"$ref": "#/components/correlationIds/jobId"},
        "bindings": {
            "kafka": {
                "key": {"$ref": SCHEMA_REF.format(name="JobKey")},
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "tags": [{"name": "internal" if internal else "public"}],
        "examples": _event_examples(type_),
    }


def _dead_letter_message(prefix: str) -> dict[str, Any]:
    original = _example(events.JOB_REQUESTED)
    return {
        "name": DEAD_LETTER,
        "title": "dead letter",
        "summary": "A record that could not be processed, kept as it was consumed.",
        "description": "The value and key are the original record's, byte for byte: usually "
        "one of the CloudEvents above, but a value that was not a valid CloudEvent is kept as "
        "it came. The original's own headers are kept too (without the retry headers); "
        "`pixstream dlq replay` sends it back without the dead-letter headers and with "
        f"`{redelivery.REPLAY_OF}`.",
        "headers": {"$ref": SCHEMA_REF.format(name="DeadLetterHeaders")},
        "payload": {
            "description": "The original value.",
            "anyOf": [
                {"$ref": SCHEMA_REF.format(name=ENVELOPE)},
                {"description": "Anything else, unparsed (it need not be JSON)."},
            ],
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The original key: the job id for PixStream's own records; "
                    "empty when the original had none.",
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "tags": [{"name": "public"}],
        "examples": [
            {
                "name": "invalidRequest",
                "summary": "A job request whose data was invalid and that named no job id.",
                "headers": {
                    redelivery.DLQ_TOPIC: f"{prefix}.jobs",
                    redelivery.DLQ_PARTITION: "2",
                    redelivery.DLQ_OFFSET: "41",
                    redelivery.DLQ_ERROR_CLASS: "pixstream.errors.InvalidEvent",
                    redelivery.DLQ_ERROR_MESSAGE: "data.job_id: Field required",
                    redelivery.DLQ_ATTEMPTS: "1",
                    redelivery.DLQ_TIME: "2025-01-15T10:30:00.250000+00:00",
                },
                "payload": {
                    **original,
                    "data": {k: v for k, v in original["data"].items() if k != "job_id"},
                },
            }
        ],
    }


def _event_examples(type_: str) -> list[dict[str, Any]]:
    example = _example(type_)
    examples = [{"name": _id(type_), "payload": example}]
    if type_ == events.JOB_REQUESTED:
        job_id = "acme-20250115-0001"
        data = {
            **example["data"],
            "job_id": job_id,
            "source": {"url": "https://images.acme.example/uploads/0001.jpg"},
        }
        del data["webhook_url"]
        examples.append(
            {
                "name": "fromAnotherSystem",
                "summary": "Produced straight to Kafka by a tenant's system, from an https URL.",
                "payload": {
                    **example,
                    "id": events.event_id_for(job_id, type_),
                    "source": "/acme/uploader",
                    "data": data,
                    TENANT_ATTRIBUTE: "acme",
                },
            }
        )
    return examples


def _example(type_: str) -> dict[str, Any]:
    example: dict[str, Any] = json.loads((EXAMPLES / f"{type_}.json").read_text(encoding="utf-8"))
    return example


# -- schemas ----------------------------------------------------------------------------------
def _schemas() -> dict[str, Any]:
    """`schemas/`'s event schemas with their `$defs` hoisted, plus keys and headers."""
    files = schemas.generate()
    sources = {ENVELOPE: files["cloudevent.schema.json"]}
    sources |= {type_: files[f"{type_}.schema.json"] for type_ in events.DATA_MODELS}
    components: dict[str, Any] = {}
    for name, schema in sources.items():
        body = _hoisted(schema)
        for def_name, definition in body.pop("$defs", {}).items():
            if components.setdefault(def_name, definition) != definition:
                raise ValueError(f"two different schemas are both named {def_name!r}")
        components[name] = body
    components["JobKey"] = {
        "type": "string",
        "pattern": ID_PATTERN,
        "description": "The record key: the job id, so a job's records share a partition and "
        "keep their order.",
    }
    components["RedeliveryHeaders"] = _headers(
        _REDELIVERY_HEADERS,
        required=(),
        description="None is needed to send a job. PixStream sets the first five on a record "
        "it parks for a retry; they are still there when the relay sends it back.",
    )
    components["DeadLetterHeaders"] = _headers(
        _DEAD_LETTER_HEADERS,
        required=[h for h in _DEAD_LETTER_HEADERS if h not in _OPTIONAL_DEAD_LETTER_HEADERS],
        description="Where the record came from and why it was dead-lettered; the original "
        "record's other headers are kept alongside.",
    )
    return components


def _hoisted(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without `$schema`, its `#/$defs/X` references pointed at the components."""
    body = {k: v for k, v in schema.items() if k != "$schema"}
    text = re.sub(
        r'"#/\$defs/([^"]+)"', lambda m: f'"{SCHEMA_REF.format(name=m[1])}"', json.dumps(body)
    )
    hoisted: dict[str, Any] = json.loads(text)
    return hoisted


def _headers(
    headers: dict[str, tuple[str | None, str]], *, required: Sequence[str], description: str
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, (pattern, text) in headers.items():
        properties[name] = {"type": "string", "description": text}
        if pattern is not None:
            properties[name]["pattern"] = pattern
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }
    if required:
        schema["required"] = list(required)
    return schema


# -- names ------------------------------------------------------------------------------------
def _id(type_: str) -> str:
    """A message id: `pixstream.step.completed` -> `stepCompleted`; other ids unchanged."""
    if not type_.startswith("pixstream."):
        return type_
    first, *rest = type_.removeprefix("pixstream.").split(".")
    return first + "".join(word.capitalize() for word in rest)


def _channel_messages(channel: str) -> dict[str, Any]:
    return {_id(m): {"$ref": f"#/components/messages/{_id(m)}"} for m in _CHANNEL_MESSAGES[channel]}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0]
