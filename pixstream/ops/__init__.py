"""The operation registry: every op a job step may name, with its params model and schema."""

from __future__ import annotations

from typing import Any

from pixstream.ops.analysis import ANALYZE
from pixstream.ops.geometry import CROP, FLIP, RESIZE, ROTATE, THUMBNAIL
from pixstream.ops.operation import Operation
from pixstream.ops.pixels import BLUR, CONVERT, GRAYSCALE, SHARPEN, WATERMARK

OPERATIONS: dict[str, Operation[Any]] = {
    op.name: op
    for op in (
        RESIZE,
        THUMBNAIL,
        CROP,
        ROTATE,
        FLIP,
        GRAYSCALE,
        BLUR,
        SHARPEN,
        CONVERT,
        WATERMARK,
        ANALYZE,
    )
}


def catalogue() -> list[dict[str, Any]]:
    """The operations as GET /v1/operations lists them."""
    return [
        {"name": op.name, "description": op.description, "params": op.params_schema()}
        for op in OPERATIONS.values()
    ]


__all__ = ["OPERATIONS", "Operation", "catalogue"]
