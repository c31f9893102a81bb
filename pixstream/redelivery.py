"""Redelivery, in one place: the consumed record, the headers PixStream adds to records (read
and written here only), the retry tiers, parking a transiently failed record, the dead-letter
copy, and what the relay and `pixstream dlq` read back.

Retries and dead letters keep the original key and value untouched and say everything else in
headers, so other producers' messages are never rewritten. A fixed delay per retry topic keeps
each retry topic in due order: nothing waits behind a record that is not due yet, and the
origin topic's partition is never blocked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

ATTEMPT: Final = "pixstream-attempt"
ORIGIN_TOPIC: Final = "pixstream-origin-topic"
ORIGIN_PARTITION: Final = "pixstream-origin-partition"
ORIGIN_OFFSET: Final = "pixstream-origin-offset"
NOT_BEFORE: Final = "pixstream-not-before"
DLQ_TOPIC: Final = "pixstream-dlq-original-topic"
DLQ_PARTITION: Final = "pixstream-dlq-original-partition"
DLQ_OFFSET: Final = "pixstream-dlq-original-offset"
DLQ_ERROR_CLASS: Final = "pixstream-dlq-error-class"
DLQ_ERROR_MESSAGE: Final = "pixstream-dlq-error-message"
#: PixStream's error code when the error has one (`job_id_conflict`, `invalid_event`, ...).
DLQ_ERROR_CODE: Final = "pixstream-dlq-error-code"
DLQ_ATTEMPTS: Final = "pixstream-dlq-attempts"
DLQ_TIME: Final = "pixstream-dlq-time"
#: Set on a dead letter whose value had to be cut to fit the topic: the original size in
#: bytes. The whole value is still at DLQ_TOPIC / DLQ_PARTITION / DLQ_OFFSET until retention.
DLQ_TRUNCATED: Final = "pixstream-dlq-truncated"
REPLAY_OF: Final = "pixstream-replay-of"
#: Set by the reconciler on a job.requested it sends again for a stalled job: the job is
#: PixStream's own already, so the planner does not claim its id again.
REDRIVE: Final = "pixstream-redrive"

_RETRY_HEADERS: Final = (ATTEMPT, ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET, NOT_BEFORE)
DLQ_HEADERS: Final = (
    DLQ_TOPIC,
    DLQ_PARTITION,
    DLQ_OFFSET,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ERROR_CODE,
    DLQ_ATTEMPTS,
    DLQ_TIME,
    DLQ_TRUNCATED,
)
#: Room left for the record's key, headers and Kafka's framing when a value is cut to fit.
_FRAMING_BYTES: Final = 16 * 1024

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, independent of the consumer library."""

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

    @property
    def due(self) -> float:
        """When a parked record may be tried again (epoch seconds; 0 when not parked)."""
        try:
            return float(self.header(NOT_BEFORE) or 0)
        except ValueError:
            return 0.0

    def origin(self) -> Record:
        """Where this record first appeared, before any retry topic, without retry headers."""
        topic = self.header(ORIGIN_TOPIC)
        if topic is None:
            return self
        return Record(
            topic=topic,
            partition=int(self.header(ORIGIN_PARTITION) or -1),
            offset=int(self.header(ORIGIN_OFFSET) or -1),
            key=self.key,
            value=self.value,
            headers=tuple((k, v) for k, v in self.headers if k not in _RETRY_HEADERS),
        )

    @property
    def key_text(self) -> str:
        return self.key.decode(errors="replace") if self.key else ""


def with_headers(headers: Headers, **updates: str) -> list[tuple[str, bytes]]:
    """`headers` with `updates` (names with `_` for `-`) replacing any same-named ones."""
    new = {name.replace("_", "-"): value.encode() for name, value in updates.items()}
    return [(k, v) for k, v in headers if k not in new] + list(new.items())


# -- retry tiers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tier:
    name: str  # the declared topic name, e.g. "retry.30s"
    delay_seconds: float


TIERS: Final = (Tier("retry.5s", 5.0), Tier("retry.30s", 30.0), Tier("retry.2m", 120.0))


def tier_for(attempt: int) -> Tier:
    """The wait before attempt number `attempt + 1`: 5 s, 30 s, then 2 min each time."""
    return TIERS[min(max(attempt, 1), len(TIERS)) - 1]


def parked_headers(record: Record, attempt: int, now: float) -> list[tuple[str, bytes]]:
    """The headers of `record` parked for its `attempt`-th retry at wall-clock `now` (another
    process's relay reads the due time, so it is not loop time)."""
    origin = record.origin()
    return with_headers(
        record.headers,
        pixstream_attempt=str(attempt),
        pixstream_origin_topic=origin.topic,
        pixstream_origin_partition=str(origin.partition),
        pixstream_origin_offset=str(origin.offset),
        pixstream_not_before=f"{now + tier_for(attempt).delay_seconds:.3f}",
    )


# -- dead letters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetterCopy:
    """What goes to the DLQ for a record: its value (cut to fit when it must be) and headers."""

    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter_headers(
    record: Record, error: BaseException, attempts: int, *, when: datetime | None = None
) -> list[tuple[str, bytes]]:
    """The original record's context, for `pixstream dlq list` and `replay`."""
    message = str(error) or type(error).__name__
    code = getattr(error, "code", None)
    coded = {"pixstream_dlq_error_code": code} if isinstance(code, str) else {}
    return with_headers(
        record.headers,
        **coded,
        pixstream_dlq_original_topic=record.topic,
        pixstream_dlq_original_partition=str(record.partition),
        pixstream_dlq_original_offset=str(record.offset),
        pixstream_dlq_error_class=f"{type(error).__module__}.{type(error).__qualname__}",
        pixstream_dlq_error_message=message[:2000],
        pixstream_dlq_attempts=str(attempts),
        pixstream_dlq_time=(when or datetime.now(UTC)).isoformat(),
    )


def dead_letter_copy(record: Record, error: BaseException, attempts: int) -> DeadLetterCopy:
    """The dead letter of `record`, whose origin the headers name."""
    origin = record.origin()
    return DeadLetterCopy(origin.value or b"", dead_letter_headers(origin, error, attempts))


def truncated(letter: DeadLetterCopy, max_bytes: int) -> DeadLetterCopy:
    """`letter` with its value cut so the record fits in `max_bytes`, saying so in a header;
    the headers already point at the original, which keeps the whole value."""
    room = max(0, max_bytes - _FRAMING_BYTES - sum(len(k) + len(v) for k, v in letter.headers))
    return DeadLetterCopy(
        letter.value[:room],
        with_headers(letter.headers, pixstream_dlq_truncated=str(len(letter.value))),
    )


def replay_headers(headers: Headers, letter_id: str) -> list[tuple[str, bytes]]:
    """The headers a replayed dead letter goes back with: its own, without the DLQ's."""
    kept = [(k, v) for k, v in headers if k not in DLQ_HEADERS]
    return [*kept, (REPLAY_OF, f"dlq:{letter_id}".encode())]
