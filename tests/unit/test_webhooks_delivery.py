"""Webhook delivery against real aiohttp receivers bound to 127.0.0.1 (loopback only).

Also the pure parts of delivery: classification and the retry schedule.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from pixstream import signing
from pixstream.errors import DestinationRefused
from pixstream.netguard import guarded_request, guarded_session
from pixstream.webhooks import (
    RETRY_SCHEDULE,
    Breakers,
    Outcome,
    classify,
    deliver,
    next_delay,
)

SECRET = "whsec_" + base64.b64encode(b"pixstream test webhook secret").decode()
BODY = b'{"type": "pixstream.job.completed", "data": {"job_id": "j1"}}'


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that records requests and answers queued statuses."""

    statuses: deque[int] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    # While set, the handler waits for it before answering (to hold a request in flight).
    hold: asyncio.Event | None = None
    # Set once a request has been recorded.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        status = self.statuses.popleft() if self.statuses else 200
        if status in (301, 302, 307, 308):
            return web.Response(status=status, headers={"Location": "/redirected"})
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    if receiver.hold is not None:
        receiver.hold.set()
    await receiver.stop()


@pytest.fixture
async def open_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A guarded session that lets loopback through, for delivery tests."""
    async with guarded_session(allow_private=True, timeout_seconds=5) as session:
        yield session


@pytest.fixture
async def strict_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A guarded session as in production: private destinations refused."""
    async with guarded_session(allow_private=False, timeout_seconds=5) as session:
        yield session


async def send(
    session: aiohttp.ClientSession,
    breakers: Breakers,
    url: str,
    *,
    allow_private: bool = True,
    event_id: str = "evt_1",
    request_timeout: float = 5,
) -> Outcome:
    result = await deliver(
        session,
        breakers,
        url,
        BODY,
        event_id=event_id,
        secrets=[SECRET],
        timeout=request_timeout,
        allow_private=allow_private,
    )
    return result.outcome


# Pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (408, Outcome.RETRY),
        (410, Outcome.GONE),
        (400, Outcome.REJECTED),
        (401, Outcome.REJECTED),
        (404, Outcome.REJECTED),
        (301, Outcome.REJECTED),
        (302, Outcome.REJECTED),
        (307, Outcome.REJECTED),
    ],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify(status, None) is outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (TimeoutError(), Outcome.RETRY),
        (aiohttp.ServerDisconnectedError(), Outcome.RETRY),
        (aiohttp.ClientConnectionError("refused"), Outcome.RETRY),
        (ConnectionResetError(), Outcome.RETRY),
        (DestinationRefused("loopback"), Outcome.REFUSED),
        (aiohttp.InvalidURL("http://"), Outcome.REFUSED),
    ],
)
def test_classify_exception(exc: BaseException, outcome: Outcome) -> None:
    assert classify(None, exc) is outcome


def test_classify_needs_a_status_or_an_exception() -> None:
    with pytest.raises(ValueError, match="status or an exception"):
        classify(None, None)


def test_retry_schedule_spans_about_a_day() -> None:
    assert len(RETRY_SCHEDULE) == 10
    assert list(RETRY_SCHEDULE) == sorted(RETRY_SCHEDULE)
    assert 20 * 3600 <= sum(RETRY_SCHEDULE) <= 28 * 3600


def test_next_delay_jitters_within_twenty_percent() -> None:
    rng = random.Random(7)
    for attempt, base in enumerate(RETRY_SCHEDULE, start=1):
        delays = [next_delay(attempt, RETRY_SCHEDULE, rng) for _ in range(200)]
        assert all(d is not None and 0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(set(delays)) > 1


def test_next_delay_is_none_when_the_budget_is_spent() -> None:
    assert next_delay(len(RETRY_SCHEDULE) + 1) is None
    assert next_delay(3, schedule=(1.0, 2.0)) is None
    with pytest.raises(ValueError, match="start at 1"):
        next_delay(0)


def test_next_delay_uses_the_given_schedule() -> None:
    delay = next_delay(2, schedule=(1.0, 100.0), rng=random.Random(1))
    assert delay is not None
    assert 80.0 <= delay <= 120.0


# Delivery against loopback receivers ----------------------------------------------------


async def test_retries_keep_the_id_and_every_attempt_verifies(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    receiver.statuses.extend([500, 500, 200])
    breakers = Breakers()
    outcomes = [await send(open_session, breakers, receiver.url) for _ in range(3)]

    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.DELIVERED]
    assert len(receiver.requests) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {"evt_1"}
    for request in receiver.requests:
        assert request.body == BODY
        assert request.headers["Content-Type"] == "application/json"
        signing.verify(SECRET, request.headers, request.body)


async def test_delivered_result_carries_status_and_duration(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    result = await deliver(
        open_session,
        Breakers(),
        receiver.url,
        BODY,
        event_id="evt_2",
        secrets=[SECRET],
        timeout=5,
        allow_private=True,
    )
    assert result.outcome is Outcome.DELIVERED
    assert result.status == 200
    assert result.error is None
    assert result.duration >= 0


@pytest.mark.parametrize(
    ("status", "outcome"), [(410, Outcome.GONE), (400, Outcome.REJECTED), (429, Outcome.RETRY)]
)
async def test_receiver_answers(
    receiver: Receiver, open_session: aiohttp.ClientSession, status: int, outcome: Outcome
) -> None:
    receiver.statuses.append(status)
    result = await deliver(
        open_session,
        Breakers(),
        receiver.url,
        BODY,
        event_id="evt_3",
        secrets=[SECRET],
        timeout=5,
        allow_private=True,
    )
    assert result.outcome is outcome
    assert result.status == status
    assert result.error is not None
    assert str(status) in result.error


async def test_redirects_are_not_followed(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    receiver.statuses.append(302)
    assert await send(open_session, Breakers(), receiver.url) is Outcome.REJECTED
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_a_timeout_is_retried(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    receiver.hold = asyncio.Event()
    assert await send(open_session, Breakers(), receiver.url, request_timeout=0.2) is Outcome.RETRY


async def test_rejections_do_not_count_against_the_breaker(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    receiver.statuses.extend([400, 404, 410, 400])
    breakers = Breakers(fail_max=2)
    for _ in range(4):
        await send(open_session, breakers, receiver.url)
    assert breakers.state("127.0.0.1") == "closed"


async def test_breaker_opens_on_outages_then_half_opens_and_closes(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    breakers = Breakers(fail_max=3, reset_timeout=1.0)
    url = receiver.url
    await receiver.stop()  # the port is now closed: every attempt fails to connect

    for _ in range(3):
        assert await send(open_session, breakers, url) is Outcome.RETRY
    assert breakers.state("127.0.0.1") == "open"

    # Listening again on the same port: an open breaker must not even connect.
    await receiver.start()
    assert receiver.url == url
    assert await send(open_session, breakers, url) is Outcome.BREAKER_OPEN
    assert receiver.requests == []

    await asyncio.sleep(1.2)  # past reset_timeout: the next call is the half-open trial
    receiver.hold = asyncio.Event()
    trial = asyncio.create_task(send(open_session, breakers, url))
    await receiver.arrived.wait()
    assert breakers.state("127.0.0.1") == "half-open"
    # One trial at a time: a second delivery waits like it would while open.
    assert await send(open_session, breakers, url) is Outcome.BREAKER_OPEN
    receiver.hold.set()

    assert await trial is Outcome.DELIVERED
    assert breakers.state("127.0.0.1") == "closed"
    assert len(receiver.requests) == 1
    assert await send(open_session, breakers, url) is Outcome.DELIVERED


async def test_a_failed_trial_opens_the_breaker_again(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    breakers = Breakers(fail_max=1, reset_timeout=1.0)
    receiver.statuses.extend([503, 503])
    assert await send(open_session, breakers, receiver.url) is Outcome.RETRY
    assert breakers.state("127.0.0.1") == "open"
    await asyncio.sleep(1.2)
    assert await send(open_session, breakers, receiver.url) is Outcome.RETRY
    assert breakers.state("127.0.0.1") == "open"
    assert await send(open_session, breakers, receiver.url) is Outcome.BREAKER_OPEN
    assert len(receiver.requests) == 2


# The SSRF guard end to end --------------------------------------------------------------


def guarded_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://localhost:{port}/hook",
    ]


async def test_the_guard_refuses_loopback_in_every_spelling(
    receiver: Receiver, strict_session: aiohttp.ClientSession
) -> None:
    breakers = Breakers(fail_max=1)
    for url in guarded_urls(receiver.port):
        result = await deliver(
            strict_session,
            breakers,
            url,
            BODY,
            event_id="evt_4",
            secrets=[SECRET],
            timeout=5,
            allow_private=False,
        )
        assert result.outcome is Outcome.REFUSED, url
        assert result.error is not None
        assert "loopback" in result.error
    assert receiver.requests == []
    # A refusal is not an outage of the host.
    assert breakers.state("localhost") == "closed"


async def test_guarded_request_refuses_loopback_in_every_spelling(
    receiver: Receiver, strict_session: aiohttp.ClientSession
) -> None:
    for url in guarded_urls(receiver.port):
        with pytest.raises(DestinationRefused, match="loopback"):
            async with guarded_request(strict_session, "POST", url, allow_private=False):
                pass
    assert receiver.requests == []


async def test_the_resolver_refuses_even_when_check_url_is_skipped(
    receiver: Receiver, strict_session: aiohttp.ClientSession
) -> None:
    # A caller that forgot check_url still cannot reach a name that resolves to loopback.
    with pytest.raises(DestinationRefused, match=r"resolves to .*loopback"):
        async with strict_session.post(f"http://localhost:{receiver.port}/hook"):
            pass
    assert receiver.requests == []


async def test_allow_private_delivers_to_loopback(
    receiver: Receiver, open_session: aiohttp.ClientSession
) -> None:
    assert await send(open_session, Breakers(), receiver.url) is Outcome.DELIVERED
    by_name = f"http://localhost:{receiver.port}/hook"
    assert await send(open_session, Breakers(), by_name) is Outcome.DELIVERED
    assert len(receiver.requests) == 2
