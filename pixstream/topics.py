"""The declared Kafka topics (topics/topics.toml), which of them a job request or a task of
each priority goes to, and how the broker is made to match them."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.admin.new_partitions import NewPartitions
from aiokafka.errors import for_code

from pixstream.settings import Settings
from pixstream.spec import BATCH, INTERACTIVE

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "topics" / "topics.toml"
#: The worker's one Faust table (job progress, keyed like the events topic).
TRACKER_TABLE = "jobs"
#: The contract's jobs topic: job requests of any priority, from the ingress and other systems.
JOBS: Final = "jobs"
#: The lane of batch work: `jobs.batch` and `op.<op>.batch` next to `jobs` and `op.<op>`.
BATCH_SUFFIX: Final = ".batch"


def jobs_topic(priority: str) -> str:
    """The jobs topic (relative name) PixStream sends a request or a retry of this priority to.
    Batch requests have a lane of their own, so an interactive request never waits behind a
    burst of them to be planned; `jobs` still takes batch requests from other systems."""
    return f"{JOBS}{BATCH_SUFFIX}" if priority == BATCH else JOBS


def op_topic(op: str, priority: str) -> str:
    """The op topic (relative name) a task of this priority waits on."""
    return f"op.{op}{BATCH_SUFFIX}" if priority == BATCH else f"op.{op}"


def lane_topics(settings: Settings, priority: str, ops: Iterable[str]) -> list[str]:
    """The topics of one lane (full names) for a worker running `ops`: the jobs topic of that
    priority, then the op topics."""
    names = [jobs_topic(priority), *(op_topic(op, priority) for op in ops)]
    return [settings.topic(name) for name in names]


def lane_of(name: str) -> str | None:
    """`interactive` or `batch` for a laned topic (relative name: the jobs and op topics),
    None for any other. `jobs` is interactive: what waits there is planned first."""
    laned = name.removesuffix(BATCH_SUFFIX)
    if laned != JOBS and not laned.startswith("op."):
        return None
    return BATCH if name.endswith(BATCH_SUFFIX) else INTERACTIVE


def changelog_topic(settings: Settings, table: str = TRACKER_TABLE) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicConfig:
    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    topic: str
    action: str  # "create" | "partitions" | "config"
    detail: str

    def __str__(self) -> str:
        return f"{self.action:<10} {self.topic}: {self.detail}"


def load_topics(settings: Settings, path: Path | None = None) -> list[TopicConfig]:
    """The declaration with the settings' prefix applied."""
    doc = tomllib.loads((path or DEFAULT_FILE).read_text())
    defaults: dict[str, Any] = doc.get("defaults", {})
    topics = []
    for name, spec in doc.get("topics", {}).items():
        config = {**defaults.get("config", {}), **spec.get("config", {})}
        topics.append(
            TopicConfig(
                name=settings.topic(name),
                partitions=int(spec.get("partitions", defaults.get("partitions", 1))),
                replication=int(spec.get("replication", defaults.get("replication", 1))),
                config={k: str(v) for k, v in config.items()},
            )
        )
    return [*topics, _tracker_changelog(settings, topics)]


def _tracker_changelog(settings: Settings, topics: Sequence[TopicConfig]) -> TopicConfig:
    # Declared here rather than left to Faust: a worker that creates it at its first
    # assignment can read the new topic's metadata before every partition has a leader, see
    # fewer partitions than the events topic and stop with PartitionsMismatch.
    (events,) = (t for t in topics if t.name == settings.topic("events"))
    return TopicConfig(
        name=changelog_topic(settings),
        partitions=events.partitions,
        replication=events.replication,
        config={"cleanup.policy": "compact"},
    )


async def apply_topics(
    bootstrap: str, declared: Sequence[TopicConfig], *, dry_run: bool = False
) -> list[Change]:
    """Make the broker match the declaration; return what changed (or would, when dry)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        return await _apply(admin, declared, dry_run)
    finally:
        await admin.close()


async def _apply(
    admin: AIOKafkaAdminClient, declared: Sequence[TopicConfig], dry_run: bool
) -> list[Change]:
    existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    changes: list[Change] = []

    missing = [t for t in declared if t.name not in existing]
    changes += [Change(t.name, "create", f"{t.partitions} partitions") for t in missing]
    if missing and not dry_run:
        resp = await admin.create_topics(
            [
                NewTopic(t.name, t.partitions, t.replication, topic_configs=dict(t.config))
                for t in missing
            ]
        )
        _raise_for_errors(resp.topic_errors)

    present = [t for t in declared if t.name in existing]
    grow = {t.name: t.partitions for t in present if t.partitions > existing[t.name]}
    changes += [Change(n, "partitions", f"{existing[n]} -> {p}") for n, p in grow.items()]
    if grow and not dry_run:
        await admin.create_partitions({n: NewPartitions(p) for n, p in grow.items()})

    if present:
        current = await _topic_configs(admin, [t.name for t in present])
        for t in present:
            diff = {k: v for k, v in t.config.items() if current[t.name].get(k) != v}
            if not diff:
                continue
            changes.append(
                Change(
                    t.name,
                    "config",
                    ", ".join(
                        f"{k}={current[t.name].get(k)} -> {v}" for k, v in sorted(diff.items())
                    ),
                )
            )
            if not dry_run:
                # AlterConfigs replaces the topic's dynamic config: send the whole declaration.
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, t.name, configs=dict(t.config))]
                )
    return changes


async def _topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    )
    configs: dict[str, dict[str, str]] = {}
    for resp in responses:
        for error_code, _message, _type, name, entries in resp.resources:
            if error_code:
                raise for_code(error_code)(f"describe configs of {name}")
            configs[name] = {e[0]: e[1] for e in entries}
    return configs


def _raise_for_errors(topic_errors: Sequence[tuple[Any, ...]]) -> None:
    for topic, code, *rest in topic_errors:
        if code and code != 36:  # 36: TOPIC_ALREADY_EXISTS, a concurrent apply won the race
            raise for_code(code)(f"create {topic}: {rest[0] if rest else ''}")
