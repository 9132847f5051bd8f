"""The Kafka broker for a bench session: start/stop via scripts/kafka-local, topics, offsets."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from benchkit.procs import free_port

__all__ = ["Broker", "kafka_version", "session_broker"]


@dataclass
class Broker:
    """A reachable broker; pid_file is set only when this session started it."""

    bootstrap: str
    pid_file: Path | None = None
    _admin: KafkaAdminClient | None = field(default=None, repr=False)
    _consumer: KafkaConsumer | None = field(default=None, repr=False)

    @property
    def admin(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=30_000
            )
        return self._admin

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=30_000,
            )
        return self._consumer

    def pid(self) -> int | None:
        """The broker JVM's pid, if this session started it."""
        if self.pid_file is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def create_topic(
        self,
        name: str,
        partitions: int,
        configs: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create a topic and wait until every partition answers ListOffsets."""
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=1, topic_configs=configs or {}
        )
        self.admin.create_topics([topic])
        deadline = time.monotonic() + timeout
        while self.end_total(name, partitions) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} not ready after {timeout:.0f}s")
            time.sleep(0.1)

    def delete_topic(self, name: str) -> None:
        """Delete a topic (frees the broker's disk between runs); errors are ignored."""
        with contextlib.suppress(KafkaError):
            self.admin.delete_topics([name])

    def end_total(self, topic: str, partitions: int) -> int | None:
        """Sum of the topic's end offsets (None while the broker cannot answer)."""
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        try:
            return int(sum(self.consumer.end_offsets(tps).values()))
        except KafkaError:
            return None

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def kafka_version(repo: Path) -> str:
    """The Kafka version scripts/kafka-local runs."""
    text = (repo / "scripts" / "kafka-local").read_text(encoding="utf-8")
    m = re.search(r"^KAFKA_VERSION=(\S+)", text, re.MULTILINE)
    return m.group(1) if m else "unknown"


def _kafka_local(repo: Path, home: Path, port: int, *args: str) -> str:
    env = {**os.environ, "KAFKA_HOME_DIR": str(home), "KAFKA_PORT": str(port)}
    env.pop("KAFKA_CONTROLLER_PORT", None)
    out = subprocess.run(
        [str(repo / "scripts" / "kafka-local"), *args],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@contextlib.contextmanager
def session_broker(repo: Path, tmp: Path) -> Iterator[Broker]:
    """Use $KAFKA_BOOTSTRAP, or start a private broker and stop/purge it on the way out."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        ext = Broker(external)
        try:
            yield ext
        finally:
            ext.close()
        return
    home, port = tmp / "kafka", free_port()
    print(f"bench: starting a private Kafka broker on port {port} ...", flush=True)
    broker: Broker | None = None
    try:
        broker = Broker(_kafka_local(repo, home, port, "start"), home / "kafka.pid")
        yield broker
    finally:
        if broker is not None:
            broker.close()
        _kafka_local(repo, home, port, "stop", "--purge")
