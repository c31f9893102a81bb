"""The opaque `cursor` of GET /v1/jobs: where the previous page ended, (created_at, job_id)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from pixstream.ingress.problems import BadRequest


@dataclass(frozen=True)
class Cursor:
    position: tuple[datetime, str]

    @classmethod
    def of(cls, created_at: datetime, job_id: str) -> Cursor:
        return cls((created_at, job_id))

    @property
    def text(self) -> str:
        created_at, job_id = self.position
        raw = f"{created_at.isoformat()}|{job_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor in `text`; BadRequest when it is not one this service handed out."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            when, _, job_id = raw.partition("|")
            created_at = datetime.fromisoformat(when)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadRequest("cursor is not one this service handed out") from None
        if not job_id or created_at.tzinfo is None:
            raise BadRequest("cursor is not one this service handed out")
        return cls((created_at, job_id))
