"""A Kafka client that is not ours, for tests: librdkafka through confluent-kafka."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Collection, Mapping

from confluent_kafka import Consumer, KafkaException, Producer

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def librdkafka_producer(bootstrap: str, codec_name: str = "none",
                        config: Mapping[str, str] | None = None) -> Producer:
    """`config`: further librdkafka settings (security: `ClientSecurity.librdkafka()`)."""
    return Producer({"bootstrap.servers": bootstrap, "compression.type": codec_name,
                     "acks": "all", "linger.ms": 20, "message.max.bytes": 32 << 20,
                     "enable.idempotence": False, **(config or {})})


def produce(producer: Producer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Sends and waits for every delivery report; raises on any failed delivery."""
    errors = []
    for key, value in messages:
        producer.produce(topic, value, key=key,
                         on_delivery=lambda error, _msg: error and errors.append(error))
    if producer.flush(60) or errors:
        raise KafkaException(errors[0] if errors else "undelivered messages after 60 s")


@dataclasses.dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    received_s: float  # time.monotonic() when the reader got it


class Reader:
    """Follows topics from their start in a background thread with a librdkafka consumer of its
    own (`group_id`, default a fresh group): `records()` is what arrived so far. `isolation`
    "read_committed" sees only committed transactions. `config`: further librdkafka settings
    (security: `ClientSecurity.librdkafka()`)."""

    def __init__(self, bootstrap: str, topics: list[str], isolation: str = "read_committed",
                 *, group_id: str | None = None, config: Mapping[str, str] | None = None):
        self.group_id = group_id or f"reader-{uuid.uuid4().hex[:8]}"
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": self.group_id,
                                   "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                   "isolation.level": isolation, "fetch.wait.max.ms": 10,
                                   "topic.metadata.refresh.interval.ms": 1000,
                                   "log_level": 2,  # a killed broker is expected here
                                   **(config or {})})
        self._consumer.subscribe(topics)
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Reader":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(500, 0.2)
            now = time.monotonic()
            read = [Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), now)
                    for m in messages if m.error() is None]
            with self._lock:
                self._records.extend(read)

    def records(self, topics: Collection[str] | None = None) -> list[Record]:
        """What arrived so far (of `topics` only, if given), in arrival order."""
        with self._lock:
            return [r for r in self._records if topics is None or r.topic in topics]
