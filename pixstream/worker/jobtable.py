"""The tracker's Faust table, able to say when what it wrote for a job is on the broker.

A table write goes to its changelog without waiting (Faust's `send_soon`), and the tracker
must know it landed twice per event: before it emits a terminal event (a restarted tracker
rebuilt from a changelog that never heard of the end would emit it again), and before the
event counts as handled (a commit past a step result the rebuilt table lacks loses it).
Faust's `producer.flush()` did not prove it: it stops waiting for its buffer after 0.1 s
without a send, and a batch the broker refused is no error to it. Each write's own
`FutureMessage` is: it resolves with the broker's acknowledgement, or with the error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import faust
from faust.types import FutureMessage

from pixstream import errors

log = logging.getLogger(__name__)

#: How long an event's handler waits for its job's changelog write before the event is
#: treated as failed for now (parked and handled again), and how often a refused write is
#: sent again within that wait.
WRITE_SECONDS: Final = 30.0
WRITE_ATTEMPTS: Final = 3


class JobTable(faust.Table[str, Any]):
    """Keeps each key's last changelog write until the broker took it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writes: dict[Any, FutureMessage] = {}

    def send_changelog(
        self, partition: int | None, key: Any, value: Any, *args: Any, **kwargs: Any
    ) -> FutureMessage:
        fut = super().send_changelog(partition, key, value, *args, **kwargs)
        self._writes[key] = fut
        fut.add_done_callback(lambda done: self._taken(key, done))
        return fut

    def _taken(self, key: Any, fut: FutureMessage) -> None:
        # A refused write stays, for `written` to send again.
        if self._writes.get(key) is fut and not fut.cancelled() and fut.exception() is None:
            del self._writes[key]

    async def written(self, key: str) -> None:
        """Return once the last changelog write of `key` is on the broker; a write it
        refused is sent again with the key's value now (a changelog keeps a key's last
        write). TransientError when it is not there within WRITE_SECONDS."""
        deadline = asyncio.get_running_loop().time() + WRITE_SECONDS
        attempts = 0
        while (fut := self._writes.get(key)) is not None:
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout=max(left, 0))
            except TimeoutError as exc:
                raise errors.TransientError(
                    f"the tracker's changelog write for job {key} was not acknowledged "
                    f"within {WRITE_SECONDS:.0f} s"
                ) from exc
            except Exception as exc:  # the broker refused it: the value now, again
                attempts += 1
                if attempts >= WRITE_ATTEMPTS:
                    raise errors.TransientError(
                        f"the tracker's changelog write for job {key} failed: {exc}"
                    ) from exc
                log.warning("changelog write refused (%s); sending it again", exc)
                if self._writes.get(key) is fut:
                    self._send_again(key, fut.message.partition)
            else:
                if self._writes.get(key) is fut:
                    del self._writes[key]

    def _send_again(self, key: Any, partition: int | None) -> None:
        if key in self.data:
            self.send_changelog(partition, key, self.data[key])
        else:  # deleted since (pruned)
            self.send_changelog(partition, key, None, value_serializer="raw")
