"""Apache Kafka in KRaft mode, one node, from its official jars gathered by Maven."""

from __future__ import annotations

import base64
import hashlib
import shutil
import uuid
from pathlib import Path

from pixstream.settings import Settings
from pixstream.stack.base import LocalService, StackError, run

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
READY_LINE = b"Kafka Server started"

SERVER_PROPERTIES = """\
# Written by `pixstream stack up`; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
# One node on two cores: the internal topics need no more than one partition and replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Topics come from topics/ (and Faust declares its own); a typo must not create one.
auto.create.topics.enable=false
"""


class KafkaService(LocalService):
    name = "kafka"

    def __init__(self, home: Path, settings: Settings) -> None:
        super().__init__(home)
        host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.controller_port = self.port + 1
        self.libs = self.dir / "libs"
        self.data = self.dir / "data"
        self.config = self.dir / "server.properties"
        self._log_mark = 0

    def install(self) -> None:
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise StackError(f"kafka: `{tool}` is not on PATH (Java 17 and Maven are needed)")
        pom = DEPLOY / "pom.xml"
        stamp = self.libs / ".pom.sha256"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest:
            return
        shutil.rmtree(self.libs, ignore_errors=True)
        run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
            ],
            log_file=self.log_file,
        )
        stamp.write_text(digest)

    def prepare(self) -> None:
        self.config.write_text(
            SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, data=self.data
            )
        )
        if (self.data / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        run(
            [
                "java",
                "-cp",
                f"{self.libs}/*",
                "kafka.tools.StorageTool",
                "format",
                # One token: a base64url id may start with "-" and read as an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.config),
            ],
            log_file=self.log_file,
        )

    def spawn(self) -> int:
        self._log_mark = self.log_file.stat().st_size if self.log_file.exists() else 0
        return self.spawn_detached(
            [
                "java",
                "-Xms512m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={DEPLOY / 'log4j2.properties'}",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(self.config),
            ]
        )

    def ready(self) -> bool:
        if not super().ready():
            return False
        if not self._log_mark:
            return True
        with self.log_file.open("rb") as f:
            f.seek(self._log_mark)
            return READY_LINE in f.read()
