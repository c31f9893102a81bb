"""Which tenant a job event speaks for, and what makes two job requests the same request.

The tenant travels as the CloudEvents extension attribute `pixstreamtenant` (absent: the
anonymous tenant). The ingress sets it from the caller's key; another system producing to
`pixstream.jobs` sets it itself, and Kafka's own ACLs decide who may.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from pixstream import apikeys, errors
from pixstream.events import CloudEvent

TENANT_ATTRIBUTE: Final = "pixstreamtenant"


def tenant_of(event: CloudEvent) -> str:
    """The event's tenant; InvalidEvent when the attribute is not a tenant name."""
    extra = event.model_extra or {}
    tenant = extra.get(TENANT_ATTRIBUTE, apikeys.ANONYMOUS)
    if not isinstance(tenant, str):
        raise errors.InvalidEvent(f"{TENANT_ATTRIBUTE}: must be a string, got {tenant!r}")
    try:
        return apikeys.check_tenant(tenant)
    except ValueError as exc:
        raise errors.InvalidEvent(f"{TENANT_ATTRIBUTE}: {exc}") from exc


def with_tenant(event: CloudEvent, tenant: str) -> CloudEvent:
    """`event` speaking for `tenant` (no attribute for the anonymous tenant, as before v2)."""
    fields = event.model_dump()
    fields.pop(TENANT_ATTRIBUTE, None)
    if tenant != apikeys.ANONYMOUS:
        fields[TENANT_ATTRIBUTE] = tenant
    return CloudEvent.model_validate(fields)


def request_digest(event: CloudEvent) -> str:
    """The identity of a job request: its tenant and its data (the id, steps, source and
    webhook), whatever its envelope's id or time. The same job id with another digest is a
    `job_id_conflict`."""
    canonical = json.dumps(
        {"tenant": tenant_of(event), "data": event.data}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
