"""Delivery of one signed webhook: one attempt, its outcome, the retry schedule and breakers.

Kafka and PostgreSQL stay outside: the caller stores the outcome and schedules the next try.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import pybreaker
from yarl import URL

from pixstream import signing
from pixstream.errors import DestinationRefused
from pixstream.netguard import check_url, guarded_request
from pixstream.settings import WEBHOOK_RETRY_SCHEDULE

log = logging.getLogger(__name__)

# Delays in seconds before attempts 2, 3, ...: about a day in total, so a receiver that is
# down for a night still gets the event.
RETRY_SCHEDULE = WEBHOOK_RETRY_SCHEDULE
JITTER = 0.2


def next_delay(
    attempt: int,
    schedule: Sequence[float] = RETRY_SCHEDULE,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based), or None when spent.

    The +-20% jitter spreads the retries of many events that failed together (one receiver
    outage) so they do not return in one burst.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if attempt > len(schedule):
        return None
    # Jitter only spreads load; it need not be unpredictable, so `random` is the right tool.
    uniform = rng.uniform if rng is not None else random.uniform
    return schedule[attempt - 1] * uniform(1 - JITTER, 1 + JITTER)


class Outcome(enum.Enum):
    """What one delivery attempt means for the event."""

    DELIVERED = "delivered"  # 2xx: done
    RETRY = "retry"  # timeout, connection error, 5xx, 408, 429: try again later
    GONE = "gone"  # 410: the receiver asked us to stop
    REJECTED = "rejected"  # other 4xx, 3xx (redirects are not followed): stop and record
    REFUSED = "refused"  # the destination is not allowed: stop and record
    BREAKER_OPEN = "breaker_open"  # not attempted; wait and retry without spending an attempt


def classify(status: int | None, exc: BaseException | None) -> Outcome:
    """The outcome of an attempt that got `status`, or failed with `exc` before a response."""
    if exc is not None:
        # aiohttp's InvalidURL is a URL we will never be able to send to.
        if isinstance(exc, DestinationRefused | aiohttp.InvalidURL):
            return Outcome.REFUSED
        return Outcome.RETRY
    if status is None:
        raise ValueError("classify needs a status or an exception")
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    # 408 Request Timeout and 429 Too Many Requests say "not now", not "never".
    if status >= 500 or status in (408, 429):
        return Outcome.RETRY
    return Outcome.REJECTED


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One attempt: its outcome, the HTTP status if one came back, an error text, seconds."""

    outcome: Outcome
    status: int | None
    error: str | None
    duration: float


class _Outage(Exception):
    """Raised inside a breaker's block so that pybreaker counts a RETRY outcome."""


class Breakers:
    """One circuit breaker per destination host, created on first use.

    Only outages (RETRY outcomes) count as failures: a 4xx is the receiver answering. While a
    breaker is open no request goes to that host. When `reset_timeout` has passed, one trial
    request is let through (others still see the breaker open); its success closes the
    breaker, its failure opens it for another `reset_timeout`.
    """

    def __init__(self, *, fail_max: int = 5, reset_timeout: float = 60.0) -> None:
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._trials: set[str] = set()

    def for_host(self, host: str) -> pybreaker.CircuitBreaker:
        key = host.lower()
        breaker = self._breakers.get(key)
        if breaker is None:
            # throw_new_error_on_trip=False: the failure that trips the breaker was a real
            # attempt and must surface as such, not as "breaker open".
            breaker = pybreaker.CircuitBreaker(
                fail_max=self.fail_max,
                reset_timeout=self.reset_timeout,
                name=key,
                throw_new_error_on_trip=False,
            )
            self._breakers[key] = breaker
        return breaker

    def state(self, host: str) -> str:
        """`closed`, `open` or `half-open` (pybreaker's names)."""
        return str(self.for_host(host).current_state)

    async def run(
        self, host: str, attempt: Callable[[], Awaitable[DeliveryResult]]
    ) -> DeliveryResult:
        """`attempt()` under `host`'s breaker, or a BREAKER_OPEN result without calling it."""
        key = host.lower()
        breaker = self.for_host(key)
        not_attempted = DeliveryResult(
            Outcome.BREAKER_OPEN, None, f"circuit breaker for {key} is open", 0.0
        )
        # pybreaker lets every caller through while half-open; one trial is enough to learn
        # whether the host is back, and cheaper for a host that is not.
        if key in self._trials:
            return not_attempted

        result: DeliveryResult | None = None
        try:
            # pybreaker's decorator cannot see a coroutine's failure; its `calling()` block
            # can, because the block stays open across the await.
            with breaker.calling():
                is_trial = breaker.current_state == pybreaker.STATE_HALF_OPEN
                if is_trial:
                    self._trials.add(key)
                try:
                    result = await attempt()
                finally:
                    if is_trial:
                        self._trials.discard(key)
                if result.outcome is Outcome.RETRY:
                    raise _Outage(result.error)
        except _Outage:
            pass
        except pybreaker.CircuitBreakerError:
            # Raised on entry while open; with throw_new_error_on_trip=False never after.
            if result is None:
                return not_attempted
        assert result is not None
        return result


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    event_id: str,
    secrets: Sequence[str],
    timeout_seconds: float,
    allow_private: bool,
) -> DeliveryResult:
    # A fresh timestamp per attempt: receivers reject signatures older than a few minutes,
    # and retries come hours later. The id stays the event's, so receivers can deduplicate.
    request_headers = signing.headers(secrets, event_id, int(time.time()), body)
    request_headers["Content-Type"] = "application/json"
    started = time.monotonic()
    try:
        async with guarded_request(
            session,
            "POST",
            url,
            allow_private=allow_private,
            data=body,
            headers=request_headers,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        ) as response:
            status = response.status
            reason = response.reason
    except (aiohttp.ClientError, TimeoutError, OSError, DestinationRefused) as exc:
        failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DeliveryResult(classify(None, exc), None, failure, time.monotonic() - started)
    outcome = classify(status, None)
    answer = None if outcome is Outcome.DELIVERED else f"HTTP {status} {reason or ''}".strip()
    return DeliveryResult(outcome, status, answer, time.monotonic() - started)


async def deliver(
    session: aiohttp.ClientSession,
    breakers: Breakers,
    url: str,
    event_body: bytes,
    *,
    event_id: str,
    secrets: Sequence[str],
    # Seconds for the HTTP request (aiohttp's ClientTimeout), not a deadline on this
    # coroutine: the breaker bookkeeping after it must always run.
    timeout: float,  # noqa: ASYNC109
    allow_private: bool,
) -> DeliveryResult:
    """POST one signed event to `url` once and say what happened; never raises for HTTP.

    `session` should come from `netguard.guarded_session` with the same `allow_private`.
    `event_id` becomes `webhook-id` and must be the same on every attempt of one event.
    """
    try:
        check_url(url, allow_private=allow_private)
    except DestinationRefused as exc:
        return DeliveryResult(Outcome.REFUSED, None, exc.message, 0.0)

    host = URL(url).host or ""
    result = await breakers.run(
        host,
        lambda: _attempt(
            session,
            url,
            event_body,
            event_id=event_id,
            secrets=secrets,
            timeout_seconds=timeout,
            allow_private=allow_private,
        ),
    )
    log.info(
        "webhook %s to %s: %s",
        event_id,
        host,
        result.outcome.value,
        extra={
            "event_id": event_id,
            "host": host,
            "outcome": result.outcome.value,
            "status": result.status,
            "duration": result.duration,
        },
    )
    return result
