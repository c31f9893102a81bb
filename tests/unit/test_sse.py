"""The server-sent events wire format, both ways, on values."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pixstream import sse


def parse(raw: bytes) -> tuple[list[sse.Message], sse.Parser]:
    parser = sse.Parser()
    found = [m for line in raw.decode().split("\n") if (m := parser.feed(line)) is not None]
    return found, parser


def test_a_frame_parses_back_to_its_fields() -> None:
    raw = sse.frame("job-1.job.completed", "pixstream.job.completed", '{"a": 1}')
    assert raw == b'id: job-1.job.completed\nevent: pixstream.job.completed\ndata: {"a": 1}\n\n'
    (message,), _ = parse(raw)
    assert message == sse.Message("job-1.job.completed", "pixstream.job.completed", '{"a": 1}')


def test_multi_line_data_keeps_its_lines() -> None:
    (message,), _ = parse(sse.frame("1", "t", "one\ntwo"))
    assert message.data == "one\ntwo"


def test_comments_and_retry_are_not_messages() -> None:
    raw = sse.retry(2000) + sse.comment("keepalive") + sse.frame("2", "t", "x")
    messages, parser = parse(raw)
    assert [m.id for m in messages] == ["2"]
    assert parser.comments == 1


def test_the_id_carries_over_and_the_type_defaults_to_message() -> None:
    messages, _ = parse(b"id: 7\ndata: a\n\ndata: b\n\n")
    assert messages == [sse.Message("7", "message", "a"), sse.Message("7", "message", "b")]


async def test_messages_reads_wire_lines_with_their_line_breaks() -> None:
    async def lines() -> AsyncIterator[bytes]:
        for line in (b": keepalive\r\n", b"id: 1\r\n", b"event: t\n", b"data: x\r\n", b"\n"):
            yield line

    assert [m async for m in sse.messages(lines())] == [sse.Message("1", "t", "x")]
