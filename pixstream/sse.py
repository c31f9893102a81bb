"""Server-sent events on the wire (the WHATWG `text/event-stream` format), both ways: the
frames the ingress writes and a line parser for the clients. Pure: no I/O, tested on values
(`messages` reads whatever iterable of lines it is given, such as aiohttp's `resp.content`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPE: Final = "text/event-stream"


def frame(event_id: str, event_type: str, data: str) -> bytes:
    """One message; `data` may span lines (each gets its own `data:` field)."""
    lines = [f"id: {event_id}", f"event: {event_type}"]
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, it keeps proxies and idle timers from closing."""
    return f": {text}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """How long an EventSource waits before it reconnects on its own."""
    return f"retry: {milliseconds}\n\n".encode()


@dataclass(frozen=True)
class Message:
    """A dispatched message; `id` is the last event id seen so far, as the spec says."""

    id: str
    event: str
    data: str


@dataclass
class Parser:
    """Feed it decoded lines (without their line break); it returns a Message at each blank
    line that ends one. Comments are counted, so a client can see the keepalives."""

    last_id: str = ""
    comments: int = 0
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None  # `retry` and unknown fields change nothing a client here uses

    def feed_line(self, raw: bytes) -> Message | None:
        """`feed` a line as read from the wire, its line break still on."""
        return self.feed(raw.decode().rstrip("\r\n"))

    def _dispatch(self) -> Message | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Message(self.last_id, event or "message", "\n".join(data))


async def messages(lines: AsyncIterable[bytes]) -> AsyncGenerator[Message]:
    """The messages of a stream read a line at a time, until it ends."""
    parser = Parser()
    async for raw in lines:
        if (message := parser.feed_line(raw)) is not None:
            yield message
