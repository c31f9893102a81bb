"""Webhooks from the worker: the notifier agent queues each terminal event that names a
`webhook_url` in PostgreSQL, and the delivery loop (one per process) sends what is due,
retries with backoff and records every outcome there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import pybreaker
from mode import Service
from yarl import URL

from pixstream import errors, metrics
from pixstream.db import deliveries
from pixstream.db.deliveries import Delivery
from pixstream.db.failures import DatabaseUnavailable, translated
from pixstream.events import (
    CloudEvent,
    Data,
    JobCompleted,
    JobFailed,
    OutputInfo,
    parse_data,
)
from pixstream.netguard import guarded_session
from pixstream.webhooks import Breakers, DeliveryResult, Outcome, deliver, next_delay
from pixstream.worker.handling import Message
from pixstream.worker.resources import Resources

log = logging.getLogger(__name__)

# Deliveries one process keeps in flight; a slow receiver holds one slot, not the loop.
MAX_IN_FLIGHT: Final = 32
# A claim must outlast one attempt (bounded by the request timeout) plus writing its result;
# only a worker that died mid-attempt ever waits this out.
LEASE_MARGIN_SECONDS: Final = 15.0

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
GONE: Final = "gone"
REFUSED: Final = "refused"


# -- the body -------------------------------------------------------------------------------------
def with_output_urls(event: CloudEvent, sign_url: Callable[[str], str]) -> CloudEvent:
    """The terminal `event` with every image output's `url` set to `sign_url(key)`
    (a metadata output has no object to link)."""
    data = parse_data(event)
    if not isinstance(data, JobCompleted | JobFailed):
        raise errors.InvalidEvent(f"type: {event.type!r} is not a terminal event")
    outputs = {
        step: (
            output.model_copy(update={"url": sign_url(output.key)})
            if isinstance(output, OutputInfo)
            else output
        )
        for step, output in data.outputs.items()
    }
    signed = data.model_copy(update={"outputs": outputs})
    return event.model_copy(update={"data": signed.model_dump(mode="json")})


def refreshed_body(body: bytes, sign_url: Callable[[str], str]) -> bytes:
    """`body` with output URLs signed again: a presigned URL lives about an hour, retries go
    on for about a day, and the receiver should get links that still open."""
    try:
        return with_output_urls(CloudEvent.parse(body), sign_url).to_bytes()
    except errors.InvalidEvent:
        return body  # we stored it, so this does not happen; send what we have if it does


# -- the agent ------------------------------------------------------------------------------------
async def notify(res: Resources, message: Message[Data]) -> None:
    """Queue one delivery per terminal event with a `webhook_url`; return once it is stored."""
    data, event = message.data, message.event
    if not isinstance(data, JobCompleted | JobFailed) or not data.webhook_url:
        return
    body = with_output_urls(event, res.storage.presigned_url).to_bytes()
    url = data.webhook_url
    await res.write_db(
        lambda conn: deliveries.enqueue(conn, event.id, data.job_id, url, body),
        what=f"queueing webhook {event.id}",
        job_id=data.job_id,
    )
    log.info(
        "webhook queued", extra={"job_id": data.job_id, "event_id": event.id, "outcome": PENDING}
    )


# -- what an outcome means for the row ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decision:
    """The row after an attempt: its state, its attempt count and, while pending, the
    seconds until the next try."""

    state: str
    attempts: int
    delay: float | None = None


def decide(
    outcome: Outcome, attempts: int, schedule: Sequence[float], *, breaker_wait: float
) -> Decision:
    """What to record after an attempt of a delivery that had `attempts` before it."""
    if outcome is Outcome.BREAKER_OPEN:
        # Nothing was sent: wait for the breaker without spending the budget.
        return Decision(PENDING, attempts, breaker_wait)
    made = attempts + 1
    if outcome is Outcome.DELIVERED:
        return Decision(DELIVERED, made)
    if outcome is Outcome.RETRY:
        delay = next_delay(made, schedule)
        return Decision(FAILED, made) if delay is None else Decision(PENDING, made, delay)
    if outcome is Outcome.GONE:
        return Decision(GONE, made)
    if outcome is Outcome.REFUSED:
        return Decision(REFUSED, made)
    return Decision(FAILED, made)  # REJECTED: the receiver answered, and said no


class BreakerClock(pybreaker.CircuitBreakerListener):
    """Remembers when each host's breaker last opened (pybreaker keeps that private) and
    keeps the BREAKER_OPEN gauge in step with the breaker."""

    def __init__(self) -> None:
        self.opened_at: dict[str, float] = {}

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        host = str(cb.name)
        if new_state.name == pybreaker.STATE_OPEN:
            self.opened_at[host] = time.time()
            metrics.BREAKER_OPEN.labels(host=host).set(1)
        elif new_state.name == pybreaker.STATE_CLOSED:
            self.opened_at.pop(host, None)
            metrics.BREAKER_OPEN.labels(host=host).set(0)

    def seconds_until_half_open(self, host: str, reset_timeout: float) -> float:
        opened = self.opened_at.get(host.lower())
        if opened is None:
            return reset_timeout
        return opened + reset_timeout - time.time()


# -- the delivery loop ----------------------------------------------------------------------------
class Deliveries(Service):
    """Claims due deliveries from PostgreSQL, sends them and records the outcomes.

    Every worker process runs one; they share the work through the table (see
    `pixstream.db.deliveries`). One set of circuit breakers per process.
    """

    def __init__(self, res: Resources, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.res = res
        s = res.settings
        self.breakers = Breakers(
            fail_max=s.webhook_breaker_fail_max, reset_timeout=s.webhook_breaker_reset_seconds
        )
        self.clock = BreakerClock()

    @Service.task
    async def _deliver_due(self) -> None:
        res = await self.res.ready()
        s = res.settings
        in_flight: set[asyncio.Task[None]] = set()
        async with guarded_session(
            allow_private=s.webhook_allow_private, timeout_seconds=s.webhook_timeout_seconds
        ) as session:
            try:
                while not self.should_stop:
                    room = MAX_IN_FLIGHT - len(in_flight)
                    claimed = await self._claim(room) if room > 0 else []
                    for delivery in claimed:
                        task = asyncio.create_task(self._attempt(session, delivery))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        task.add_done_callback(_log_crash)
                    if len(claimed) < room or room == 0:
                        await self.sleep(s.webhook_poll_seconds)
            finally:
                # Interrupted attempts keep their lease and are retried once it runs out.
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _claim(self, limit: int) -> list[Delivery]:
        lease = self.res.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
        try:
            async with translated(), self.res.pool.acquire() as conn:
                return await deliveries.claim_due(
                    conn, limit, lease, self.res.settings.webhook_rotation_seconds
                )
        except DatabaseUnavailable as exc:
            log.warning("claiming webhook deliveries failed (%s); retrying", exc)
            return []

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        s = self.res.settings
        host = _host(delivery.url)
        breaker = self.breakers.for_host(host)
        if self.clock not in breaker.listeners:
            breaker.add_listener(self.clock)
        result = await deliver(
            session,
            self.breakers,
            delivery.url,
            refreshed_body(delivery.body, self.res.storage.presigned_url),
            event_id=delivery.event_id,
            secrets=delivery.secrets or (s.webhook_secret.get_secret_value(),),
            timeout=s.webhook_timeout_seconds,
            allow_private=s.webhook_allow_private,
        )
        wait = self.clock.seconds_until_half_open(host, s.webhook_breaker_reset_seconds)
        decision = decide(
            result.outcome,
            delivery.attempts,
            s.webhook_retry_schedule,
            # While a trial request is out, the others look again at the next poll.
            breaker_wait=max(wait, s.webhook_poll_seconds),
        )
        await self.res.write_db(
            lambda conn: _record(conn, delivery.event_id, result, decision),
            what=f"recording webhook {delivery.event_id}",
            job_id=delivery.job_id,
        )
        self._report(delivery, result, decision)

    def _report(self, delivery: Delivery, result: DeliveryResult, decision: Decision) -> None:
        extra = {
            "job_id": delivery.job_id,
            "event_id": delivery.event_id,
            "attempt": decision.attempts,
            "outcome": result.outcome.value,
        }
        if result.outcome is Outcome.BREAKER_OPEN:
            log.debug("webhook %s waits for its breaker", delivery.event_id, extra=extra)
            return
        # The counter's outcomes are the row's: a retry that spent the budget counts as failed.
        metrics.WEBHOOK_DELIVERIES.labels(
            outcome="retry" if decision.state == PENDING else decision.state
        ).inc()
        level = logging.INFO if decision.state == DELIVERED else logging.WARNING
        log.log(
            level,
            "webhook %s attempt %d: %s%s",
            delivery.event_id,
            decision.attempts,
            decision.state if decision.state != PENDING else "retrying",
            f" ({result.error})" if result.error else "",
            extra=extra,
        )


async def _record(conn: Any, event_id: str, result: DeliveryResult, decision: Decision) -> None:
    if result.outcome is Outcome.BREAKER_OPEN:
        assert decision.delay is not None
        await deliveries.postpone(conn, event_id, result.error, decision.delay)
    elif decision.state == DELIVERED:
        await deliveries.mark_delivered(conn, event_id, decision.attempts, result.status)
    elif decision.state == PENDING:
        assert decision.delay is not None
        await deliveries.schedule_retry(
            conn, event_id, decision.attempts, result.status, result.error, decision.delay
        )
    else:
        await deliveries.mark_finished(
            conn, event_id, decision.state, decision.attempts, result.status, result.error
        )


def _log_crash(task: asyncio.Task[None]) -> None:
    # A bug in one attempt must not pass silently; its lease runs out and it is tried again.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("webhook attempt crashed", exc_info=exc)


def _host(url: str) -> str:
    """The breaker key `webhooks.deliver` will use for `url` ("" when it has none)."""
    try:
        return (URL(url).host or "").lower()
    except (ValueError, TypeError):
        return ""
