"""/health and the job gauges are computed once per TTL however many callers ask at once."""

from __future__ import annotations

import asyncio

import pytest

from pixstream.ingress.status import Shared


async def test_concurrent_callers_share_one_computation_until_it_is_stale() -> None:
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    shared = Shared(compute, ttl=0.2)
    assert await asyncio.gather(*(shared.get() for _ in range(50))) == [1] * 50
    assert await shared.get() == 1  # still fresh
    await asyncio.sleep(0.25)
    assert await shared.get() == 2
    assert calls == 2


async def test_a_failed_computation_is_raised_to_its_callers() -> None:
    async def broken() -> int:
        raise ConnectionError("PostgreSQL went away")

    shared = Shared(broken, ttl=0.0)
    for _ in range(2):
        with pytest.raises(ConnectionError, match="went away"):
            await shared.get()
