"""The render pool with real child processes: the same pixels as render(), PixStream errors
crossing as themselves, and a child that dies (killed, or out of memory) answered with
worker_crashed while the pool goes on."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixstream import errors
from pixstream.plan import Plan
from pixstream.render import Rendered, StepResult, render
from pixstream.spec import JobSpec, StepSpec
from pixstream.worker.renderpool import RenderPool
from tests.unit.conftest import BLUE, RED, Images, pixel

pytestmark = pytest.mark.unit

LIMITS: dict[str, Any] = {"max_pixels": 50_000_000, "max_frames": 100}
STEPS = [
    StepSpec(id="small", op="resize", params={"width": 40}),
    StepSpec(id="png", op="convert", params={"format": "png"}, input="small"),
    StepSpec(id="flipped", op="flip", params={"direction": "horizontal"}),
]


@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[RenderPool]:
    async with RenderPool(processes=2, memory_limit_bytes=1_200_000_000) as started:
        yield started


async def test_pool_renders_the_same_pixels_as_render(pool: RenderPool, images: Images) -> None:
    source = images.encode(images.marked((80, 60)), "PNG")
    rendered = await pool.render(source, STEPS, **LIMITS)
    assert rendered.ok
    small = Image.open(io.BytesIO(rendered.outputs["png"].data))
    assert small.size == (40, 30)
    assert pixel(small, (2, 2))[:3] == RED
    assert pixel(small, (38, 28))[:3] == BLUE
    flipped = Image.open(io.BytesIO(rendered.outputs["flipped"].data))
    assert pixel(flipped, (78, 2))[:3] == RED  # the red corner moved to the right
    in_thread = render(source, Plan.from_spec(JobSpec(steps=STEPS)), **LIMITS)
    assert rendered == in_thread  # byte for byte


async def test_pixstream_errors_cross_the_process_boundary_as_themselves(
    pool: RenderPool, images: Images
) -> None:
    truncated = images.encode(images.noise((256, 256)), "JPEG")[:2000]
    with pytest.raises(errors.CorruptImage) as info:
        await pool.render(truncated, STEPS, **LIMITS)
    assert info.value.code == "corrupt_image"
    exploding = [
        StepSpec(
            id="huge",
            op="resize",
            params={"width": 16384, "height": 16384, "fit": "fill", "upscale": True},
        )
    ]
    one_pixel = images.encode(images.solid((1, 1)), "PNG")
    rendered = await pool.render(one_pixel, exploding, **LIMITS)
    assert rendered.failures["huge"].code == "too_many_pixels"


async def test_each_step_is_handed_over_as_it_is_done(pool: RenderPool, images: Images) -> None:
    """on_step gets every step in plan order, the same bytes as render() in a thread; the
    outputs then travel only that way, and the slot's next render is unaffected."""
    source = images.encode(images.marked((80, 60)), "PNG")
    plan = Plan.from_spec(JobSpec(steps=STEPS))
    got: list[StepResult] = []

    async def on_step(result: StepResult) -> None:
        got.append(result)

    in_thread = render(source, plan, **LIMITS)
    for _ in range(3):  # more renders than slots: each slot's pipe is used again
        got.clear()
        rendered = await pool.render(source, STEPS, **LIMITS, on_step=on_step)
        assert got == [in_thread.result(sid) for sid in plan.order]
        assert rendered.ok
        assert rendered.outputs == {}


async def test_a_failing_handler_is_raised_after_the_render(
    pool: RenderPool, images: Images
) -> None:
    source = images.encode(images.marked((80, 60)), "PNG")
    calls: list[str] = []

    async def failing(result: StepResult) -> None:
        calls.append(result.step)
        raise errors.TransientError("S3 is away")

    with pytest.raises(errors.TransientError, match="S3 is away"):
        await pool.render(source, STEPS, **LIMITS, on_step=failing)
    assert calls == ["small"]  # not called again once it failed
    got: list[str] = []

    async def on_step(result: StepResult) -> None:
        got.append(result.step)

    for _ in range(3):  # the rest of that render was read and dropped: every slot in step
        got.clear()
        assert (await pool.render(source, STEPS, **LIMITS, on_step=on_step)).ok
        assert got == ["small", "flipped", "png"]


async def test_steps_done_before_the_child_died_are_handed_over(images: Images) -> None:
    # The first step is done and sent, then the second's allocation fails in a small
    # address space: the first step is handled, then the call answers worker_crashed.
    steps = [
        StepSpec(id="thumb", op="thumbnail", params={"size": 16}),
        StepSpec(id="huge", op="resize", params={"width": 16000, "upscale": True}),
    ]
    got: list[str] = []

    async def on_step(result: StepResult) -> None:
        got.append(result.step)

    source = images.encode(images.marked((80, 60)), "PNG")
    generous: dict[str, Any] = {"max_pixels": 400_000_000, "max_frames": 1}
    async with RenderPool(processes=1, memory_limit_bytes=300_000_000) as small:
        with pytest.raises(errors.RendererCrashed):
            await small.render(source, steps, **generous, on_step=on_step)
        assert got == ["thumb"]
        got.clear()
        assert (await small.render(source, STEPS, **LIMITS, on_step=on_step)).ok
        assert got == ["small", "flipped", "png"]


@pytest.mark.parametrize(
    "kill",
    [(os._exit, 1), (signal.raise_signal, signal.SIGKILL)],
    ids=["exit", "sigkill"],
)
async def test_a_killed_child_is_worker_crashed_and_the_pool_goes_on(
    pool: RenderPool, images: Images, kill: tuple[object, ...]
) -> None:
    source = images.encode(images.marked((80, 60)), "PNG")
    fn, *args = kill
    assert callable(fn)
    # A render in the other slot at the same time is not a casualty of its neighbour.
    outcomes: list[object] = await asyncio.gather(
        pool.call(fn, *args), pool.render(source, STEPS, **LIMITS), return_exceptions=True
    )
    crashed, neighbour = outcomes
    assert isinstance(crashed, errors.RendererCrashed)
    assert crashed.code == "worker_crashed"
    assert isinstance(neighbour, Rendered)
    assert neighbour.ok
    for _ in range(3):  # both slots work again (the dead one was replaced)
        assert (await pool.render(source, STEPS, **LIMITS)).ok


async def test_a_bomb_past_the_budget_hits_the_memory_limit_not_the_worker(
    pool: RenderPool, images: Images
) -> None:
    # A budget far too generous lets a 100 MP header-only PNG through the checks. With room
    # for its 300 MB of pixels the decoder gets to the missing data (corrupt_image); in a
    # 300 MB address space Pillow's allocation fails first, and only that child is affected.
    bomb = images.png_header_only(10_000, 10_000)
    generous: dict[str, Any] = {"max_pixels": 200_000_000, "max_frames": 1}
    with pytest.raises(errors.CorruptImage):
        await pool.render(bomb, STEPS, **generous)
    async with RenderPool(processes=1, memory_limit_bytes=300_000_000) as small:
        with pytest.raises(errors.RendererCrashed, match="ran out of memory") as info:
            await small.render(bomb, STEPS, **generous)
        assert info.value.code == "worker_crashed"
        after = await small.render(images.encode(images.marked((80, 60)), "PNG"), STEPS, **LIMITS)
        assert after.ok


async def test_the_pool_recycles_its_children(images: Images) -> None:
    async with RenderPool(processes=1, memory_limit_bytes=1_200_000_000, tasks_per_child=2) as p:
        pids = [await p.call(os.getpid) for _ in range(5)]
    assert len(set(pids)) >= 2
    assert os.getpid() not in pids


async def test_a_pool_that_is_not_started_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await RenderPool(processes=1, memory_limit_bytes=10**9).call(os.getpid)


async def test_a_render_past_its_time_limit_is_stopped_and_the_slot_goes_on() -> None:
    async with RenderPool(processes=1, memory_limit_bytes=1_200_000_000, timeout_seconds=1) as p:
        before = await p.call(os.getpid)
        with pytest.raises(errors.RenderTimedOut) as info:
            await p.call(time.sleep, 600)  # a CPU bomb stands in: nothing else returns so late
        assert info.value.code == "render_timeout"
        assert await _stopped(before)  # killed, not left burning a core
        after = await p.call(os.getpid)
    assert after != before


async def _stopped(pid: int) -> bool:
    """Gone, or dead and waiting to be reaped (a zombie), within 10 s of the signal."""
    for _ in range(100):
        if _state(pid) in {None, "Z", "X"}:
            return True
        await asyncio.sleep(0.1)
    return False


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]
