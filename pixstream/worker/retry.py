"""Scheduled redelivery: a message that failed transiently waits in a retry topic of a fixed
delay, so the head of each retry topic is always the first one due and nothing else waits
behind a message that is not due yet. The origin topic's partition is never blocked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str  # the declared topic name, e.g. "retry.30s"
    delay_seconds: float


TIERS = (Tier("retry.5s", 5.0), Tier("retry.30s", 30.0), Tier("retry.2m", 120.0))


def tier_for(attempt: int) -> Tier:
    """The wait before attempt number `attempt + 1`: 5 s, 30 s, then 2 min each time."""
    return TIERS[min(max(attempt, 1), len(TIERS)) - 1]
