"""The HTTP ingress: validates submissions, stores uploads, publishes job.requested, reads jobs."""

from __future__ import annotations

from pixstream.ingress.app import create_app

__all__ = ["create_app"]
