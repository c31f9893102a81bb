"""A consumed Kafka record, independent of Faust, and the headers PixStream adds to records.

Retries and dead letters keep the original key and value untouched and say everything else
in headers, so other producers' messages are never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

ATTEMPT = "pixstream-attempt"
ORIGIN_TOPIC = "pixstream-origin-topic"
ORIGIN_PARTITION = "pixstream-origin-partition"
ORIGIN_OFFSET = "pixstream-origin-offset"
NOT_BEFORE = "pixstream-not-before"
DLQ_TOPIC = "pixstream-dlq-original-topic"
DLQ_PARTITION = "pixstream-dlq-original-partition"
DLQ_OFFSET = "pixstream-dlq-original-offset"
DLQ_ERROR_CLASS = "pixstream-dlq-error-class"
DLQ_ERROR_MESSAGE = "pixstream-dlq-error-message"
DLQ_ATTEMPTS = "pixstream-dlq-attempts"
DLQ_TIME = "pixstream-dlq-time"
REPLAY_OF = "pixstream-replay-of"

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=tuple)

    @property
    def header_map(self) -> Mapping[str, bytes]:
        return dict(self.headers)

    def header(self, name: str) -> str | None:
        value = self.header_map.get(name)
        return value.decode(errors="replace") if value is not None else None

    @property
    def attempt(self) -> int:
        """How many times this message has failed transiently before (0 on first delivery)."""
        raw = self.header(ATTEMPT)
        return int(raw) if raw and raw.isdigit() else 0

    def origin(self) -> Record:
        """Where this record first appeared, before any retry topic, without retry headers."""
        topic = self.header(ORIGIN_TOPIC)
        if topic is None:
            return self
        retry = (ATTEMPT, ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET, NOT_BEFORE)
        return Record(
            topic=topic,
            partition=int(self.header(ORIGIN_PARTITION) or -1),
            offset=int(self.header(ORIGIN_OFFSET) or -1),
            key=self.key,
            value=self.value,
            headers=tuple((k, v) for k, v in self.headers if k not in retry),
        )

    @property
    def key_text(self) -> str:
        return self.key.decode(errors="replace") if self.key else ""


def with_headers(headers: Headers, **updates: str) -> list[tuple[str, bytes]]:
    """`headers` with `updates` (names with `_` for `-`) replacing any same-named ones."""
    new = {name.replace("_", "-"): value.encode() for name, value in updates.items()}
    return [(k, v) for k, v in headers if k not in new] + list(new.items())


def dead_letter_headers(
    record: Record, error: BaseException, attempts: int
) -> list[tuple[str, bytes]]:
    """The original record's context, for `pixstream dlq list` and `replay`."""
    message = str(error) or type(error).__name__
    return with_headers(
        record.headers,
        pixstream_dlq_original_topic=record.topic,
        pixstream_dlq_original_partition=str(record.partition),
        pixstream_dlq_original_offset=str(record.offset),
        pixstream_dlq_error_class=f"{type(error).__module__}.{type(error).__qualname__}",
        pixstream_dlq_error_message=message[:2000],
        pixstream_dlq_attempts=str(attempts),
        pixstream_dlq_time=datetime.now(UTC).isoformat(),
    )
