"""Copies of one task taken by an op agent at once (steps.route): one render."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pixstream.worker import steps

pytestmark = pytest.mark.unit


async def test_a_copy_of_a_task_being_rendered_waits_for_it_instead_of_rendering_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renders: list[str] = []
    release = asyncio.Event()

    async def render_task(res: Any, message: Any, op: str) -> None:
        renders.append(message.event.id)
        await release.wait()

    monkeypatch.setattr(steps, "render_task", render_task)
    handle: Any = steps.route(cast(Any, SimpleNamespace()), "resize").handle
    copy = SimpleNamespace(event=SimpleNamespace(id="job.task.resize"))
    other = SimpleNamespace(event=SimpleNamespace(id="other.task.resize"))
    first = asyncio.create_task(handle(copy))
    await asyncio.sleep(0)
    second = asyncio.create_task(handle(copy))
    third = asyncio.create_task(handle(other))
    await asyncio.sleep(0.05)
    assert renders == ["job.task.resize", "other.task.resize"]
    assert not second.done()  # it waits for the first copy's outcome
    release.set()
    await asyncio.gather(first, second, third)
    # Once the first copy is done, a later copy (a redelivery) is handled as usual.
    await handle(copy)
    assert renders == ["job.task.resize", "other.task.resize", "job.task.resize"]
