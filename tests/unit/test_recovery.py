"""The end of a rebalance (`worker/recovery.py`): what it works around in Faust, pinned."""

from __future__ import annotations

import asyncio

import pytest
from mode.utils.queues import FlowControlEvent, FlowControlQueue

pytestmark = pytest.mark.unit


async def test_faust_flow_control_resume_empties_queues_even_when_flow_was_running() -> None:
    # Faust calls this after its seek to the commit, with flow already running: whatever
    # the fetcher put in an agent's queue since the seek is thrown away. If mode ever stops
    # doing that, the extra seek in SeekAfterClearRecovery only costs a few duplicates.
    flow = FlowControlEvent(initially_suspended=False, loop=asyncio.get_running_loop())
    queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    await queue.put("fetched after the seek")
    assert flow.is_active()
    flow.resume()
    assert queue.empty()
