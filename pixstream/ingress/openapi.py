"""The OpenAPI 3.1 document of the HTTP API, generated from the pydantic models it serves.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic emits, so the component
schemas are the models' own schemas with their references pointed at `#/components/schemas`.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from pixstream import __version__
from pixstream.ingress.models import (
    HealthView,
    JobAccepted,
    JobView,
    OperationList,
    PresetList,
    PresetRequest,
    RetryAccepted,
)
from pixstream.ingress.problems import CONTENT_TYPE as PROBLEM_TYPE
from pixstream.ingress.problems import Problem
from pixstream.spec import JobSpec

REF: Final = "#/components/schemas/{model}"

_MODELS: Final[list[tuple[type[BaseModel], JsonSchemaMode]]] = [
    (JobSpec, "validation"),
    (PresetRequest, "validation"),
    (JobAccepted, "serialization"),
    (JobView, "serialization"),
    (RetryAccepted, "serialization"),
    (Problem, "serialization"),
    (OperationList, "serialization"),
    (PresetList, "serialization"),
    (HealthView, "serialization"),
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_TYPE: {"schema": _ref(Problem)}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        }
    return response


def _post_jobs() -> dict[str, Any]:
    return {
        "operationId": "createJob",
        "summary": "Submit an image and a job spec",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "The same key with the same request returns the same job (24 h).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "spec"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                                "description": "JPEG, PNG, WebP, GIF, TIFF, AVIF or HEIC/HEIF.",
                            },
                            "spec": {"oneOf": [_ref(JobSpec), _ref(PresetRequest)]},
                        },
                    },
                    "encoding": {"spec": {"contentType": "application/json"}},
                }
            },
        },
        "responses": {
            "202": {
                "description": "Accepted: stored and queued.",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": _json(JobAccepted),
            },
            "400": _problem("Malformed request (multipart, parts, headers)."),
            "413": _problem("The file is larger than the upload limit."),
            "415": _problem("The file is not an allowed image format."),
            "422": _problem("Invalid spec, params, webhook URL, or a reused Idempotency-Key."),
            "429": _problem("Over the per-client rate limit.", retry_after=True),
            "503": _problem("A dependency is down; nothing was accepted.", retry_after=True),
        },
    }


def _get(
    operation_id: str, summary: str, model: type[BaseModel], **extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": _json(model)}, **extra},
    }


def _paths() -> dict[str, Any]:
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    }
    get_job = _get(
        "getJob",
        "A job's status, run, progress, outputs (presigned URLs) and errors",
        JobView,
        **{
            "404": _problem("No such job."),
            "503": _problem("PostgreSQL is down.", retry_after=True),
        },
    )
    get_job["parameters"] = [job_id]
    job_events = {
        "operationId": "getJobEvents",
        "summary": "A job's lifecycle events, live, as server-sent events",
        "description": "One message per lifecycle event of the job, in order: `id:` is the "
        "CloudEvent id, `event:` its type, `data:` the CloudEvent JSON. The events that "
        "already happened come first; a comment line comes at least every 15 s; the stream "
        "ends after the terminal event (pixstream.job.completed or pixstream.job.failed).",
        "parameters": [
            job_id,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume after this event (an id this job does not have "
                "replays everything).",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "The event stream.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "404": _problem("No such job."),
            "503": _problem("Too many streams open, or PostgreSQL is down.", retry_after=True),
        },
    }
    retry_job = {
        "operationId": "retryJob",
        "summary": "Run a failed job's failed steps again, keeping its outputs that succeeded",
        "description": "Re-runs only the failed outputs of a failed job, with the steps on "
        "their paths, from its retained source; the outputs that succeeded stay as they are "
        "(their objects are not written again). The job goes back to `processing` and ends "
        "with one new terminal event (`pixstream.job.completed` or `pixstream.job.failed`, "
        "its id naming the run: `<job>.r<run>.job.completed`) and one new webhook.",
        "parameters": [job_id],
        "responses": {
            "202": {
                "description": "Accepted: the job is processing again.",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": _json(RetryAccepted),
            },
            "404": _problem("No such job (or another tenant's)."),
            "409": _problem("The job is not failed (code `job_not_retryable`)."),
            "410": _problem("The job's source is no longer retained (code `source_expired`)."),
            "429": _problem("Over the per-client rate limit.", retry_after=True),
            "503": _problem("PostgreSQL or S3 is down; nothing was accepted.", retry_after=True),
        },
    }
    text = {"text/plain": {"schema": {"type": "string"}}}
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/v1/jobs": {"post": _post_jobs()},
        "/v1/jobs/{job_id}": {"get": get_job},
        "/v1/jobs/{job_id}/events": {"get": job_events},
        "/v1/jobs/{job_id}/retry": {"post": retry_job},
        "/v1/operations": {"get": _get("listOperations", "Operations and params", OperationList)},
        "/v1/presets": {"get": _get("listPresets", "Named specs", PresetList)},
        "/health": {
            "get": _get(
                "health",
                "Deep check of Kafka, PostgreSQL and S3",
                HealthView,
                **{"503": {"description": "A dependency failed.", "content": _json(HealthView)}},
            )
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": text}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/asyncapi.json": {
            "get": {
                "operationId": "asyncapi",
                "summary": "The AsyncAPI 3.0 document of the Kafka interface",
                "responses": {
                    "200": {
                        "description": "AsyncAPI 3.0, with this deployment's topic names",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "operationId": "index",
                "summary": "The web page",
                "responses": {"200": {"description": "HTML", "content": html}},
            }
        },
    }


@cache
def _document() -> dict[str, Any]:
    _, schemas = models_json_schema(_MODELS, ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PixStream",
            "version": __version__,
            "description": "Streaming image processing: submit an image with a DAG of steps, "
            "poll the job, download the outputs. Errors are RFC 9457 problem details.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": _paths(),
        "components": {"schemas": schemas.get("$defs", {})},
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may not change the cached one)."""
    return copy.deepcopy(_document())


def schema_for(name: str) -> dict[str, Any]:
    """A standalone JSON Schema of component `name`, for validating a body against it."""
    doc = _document()
    return {"$ref": REF.format(model=name), "components": copy.deepcopy(doc["components"])}
