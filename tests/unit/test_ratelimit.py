"""The token bucket on values: an injected clock, no sleeping."""

from __future__ import annotations

import pytest

from pixstream.ingress.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_the_rate_then_one_token_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # one token every 10 s
    assert [limiter.acquire("a") for _ in range(6)] == [0.0] * 6
    assert limiter.acquire("a") == pytest.approx(10.0)
    clock.now += 4
    assert limiter.acquire("a") == pytest.approx(6.0)  # a refusal takes no token
    clock.now += 6
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(10.0)


def test_clients_are_limited_separately() -> None:
    limiter = RateLimiter(1, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_tokens_never_exceed_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=2, clock=clock)
    clock.now += 3600
    assert [limiter.acquire("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_zero_turns_the_limit_off() -> None:
    limiter = RateLimiter(0, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_a_clock_going_backwards_gives_no_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    limiter.acquire("a")
    clock.now -= 100
    assert limiter.acquire("a") > 0


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock, max_keys=100)
    for i in range(100):
        limiter.acquire(f"idle-{i}")
    clock.now += 120  # every idle bucket has refilled: nothing is lost by forgetting them
    limiter.acquire("new")
    assert len(limiter) == 1
    for i in range(500):  # all busy: the oldest half goes, the table never passes the bound
        limiter.acquire(f"busy-{i}")
        assert len(limiter) <= 100


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(-1)
