"""What makes two rendered outputs the same rendering: the source's bytes, the chain of steps
from the source to the output in canonical form, and the engine that renders it.

Pure: the render-once index (`db/renditions.py`, `worker/reuse.py`) keys its entries by
these values, so two jobs that ask for the same output of the same bytes render it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import pillow_heif
from PIL import __version__ as pillow_version
from PIL import features

from pixstream import __version__
from pixstream.plan import Plan
from pixstream.spec import StepSpec

#: Codec libraries whose version changes the bytes Pillow writes (or the pixels it reads).
_CODECS = ("jpg", "webp", "avif", "zlib")


@cache
def engine_version() -> str:
    """PixStream's, Pillow's and the codecs' versions: a new one renders everything anew,
    since any of them may change the output's bytes."""
    codecs = " ".join(f"{name}/{features.version(name) or '-'}" for name in _CODECS)
    heif = pillow_heif.__version__
    return f"pixstream/{__version__} pillow/{pillow_version} pillow-heif/{heif} {codecs}"


def source_digest(source: bytes) -> str:
    """The sha256 of the source's bytes (hex), the same value `analyze` reports."""
    return hashlib.sha256(source).hexdigest()


def canonical_chain(plan: Plan, step_id: str) -> list[dict[str, Any]]:
    """The steps from the source to `step_id`, each as its op and its params as parsed
    (defaults filled in), so `{"width": 100}` and `{"width": 100, "fit": "contain"}` are the
    same step. Step ids are left out: they name the output, they do not change it."""
    return [
        {"op": plan.steps[sid].spec.op, "params": plan.steps[sid].params.model_dump(mode="json")}
        for sid in plan.path(step_id)
    ]


def chain_key(chain: list[dict[str, Any]]) -> str:
    """The sha256 (hex) of a canonical chain's canonical JSON."""
    text = json.dumps(chain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ContentKey:
    """The identity of one output of one source, for one tenant."""

    tenant: str
    source_sha256: str
    chain_key: str
    engine: str
    chain: tuple[dict[str, Any], ...]


def output_keys(plan: Plan, tenant: str, source_sha256: str) -> dict[str, ContentKey]:
    """Every output of `plan` (step id -> its content key); two outputs of the same chain
    under different ids share a key."""
    engine = engine_version()
    keys = {}
    for sid in plan.outputs:
        chain = canonical_chain(plan, sid)
        keys[sid] = ContentKey(tenant, source_sha256, chain_key(chain), engine, tuple(chain))
    return keys


def steps_for(plan: Plan, outputs: set[str]) -> list[StepSpec]:
    """The steps needed to render `outputs` (every step on their paths), in spec order."""
    needed = {sid for out in outputs for sid in plan.path(out)}
    return [step.spec for sid, step in plan.steps.items() if sid in needed]
