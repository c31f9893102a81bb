"""Dead letters: reading `<prefix>.dlq` and re-driving records to the topic they came from.

Each replay is recorded in PostgreSQL in the same transaction that decides it, so a dead
letter is replayed at most once however often `pixstream dlq replay` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pixstream import kafka
from pixstream import redelivery as h
from pixstream.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        return dict(self.headers).get(name, b"").decode(errors="replace")

    @property
    def original_topic(self) -> str:
        return self.header(h.DLQ_TOPIC)

    def summary(self) -> str:
        return (
            f"{self.id:<8} {self.header(h.DLQ_TIME)[:19]}  key={(self.key or b'').decode()!s:<34}"
            f" from {self.original_topic}@{self.header(h.DLQ_PARTITION)}:"
            f"{self.header(h.DLQ_OFFSET)} attempts={self.header(h.DLQ_ATTEMPTS)}\n"
            f"         {self.header(h.DLQ_ERROR_CLASS)}: {self.header(h.DLQ_ERROR_MESSAGE)}"
        )

    def replay_headers(self) -> list[tuple[str, bytes]]:
        return h.replay_headers(self.headers, self.id)


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every record now in the DLQ, oldest first per partition (no consumer group)."""
    topic = settings.topic("dlq")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()
        partitions = [
            TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=1_000)
            for records in batch.values():
                letters += [
                    DeadLetter(r.partition, r.offset, r.key, r.value or b"", tuple(r.headers or ()))
                    for r in records
                ]
        return sorted(letters, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


async def replay(
    settings: Settings, letters: Sequence[DeadLetter], *, dry_run: bool = False
) -> list[tuple[DeadLetter, bool]]:
    """Re-drive `letters` to their original topics; (letter, replayed now) for each.

    A letter replayed before is skipped. The record of the replay commits only after Kafka
    confirmed the send, so a failed send leaves the letter replayable.
    """
    dlq_topic = settings.topic("dlq")
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    results: list[tuple[DeadLetter, bool]] = []
    try:
        if dry_run:
            done = await replayed_ids(conn, dlq_topic)
            return [(d, d.id not in done) for d in letters]
        async with kafka.open_producer(settings) as producer:
            for letter in letters:
                if letter.header(h.DLQ_TRUNCATED):
                    # Only a cut copy: replaying it would send a corrupt message. The whole
                    # value is at the original topic/partition/offset while retained.
                    results.append((letter, False))
                    continue
                async with conn.transaction():
                    claimed = await conn.fetchval(
                        _CLAIM, dlq_topic, letter.partition, letter.offset, letter.original_topic
                    )
                    if claimed:
                        await kafka.send(
                            producer,
                            letter.original_topic,
                            letter.value,
                            key=(letter.key or b"").decode(),
                            headers=letter.replay_headers(),
                        )
                results.append((letter, bool(claimed)))
    finally:
        await conn.close()
    return results


async def replayed_ids(conn: Any, dlq_topic: str) -> set[str]:
    """The ids (`partition:offset`) of the dead letters of `dlq_topic` replayed already."""
    return {f"{r['partition']}:{r['offset']}" for r in await conn.fetch(_REPLAYED, dlq_topic)}


_REPLAYED = 'SELECT partition, "offset" FROM dead_letter_replays WHERE dlq_topic = $1'
_CLAIM = (
    'INSERT INTO dead_letter_replays (dlq_topic, partition, "offset", target_topic)'
    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1"
)
