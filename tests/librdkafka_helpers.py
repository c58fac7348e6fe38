"""A Kafka client that is not ours, for tests: librdkafka through confluent-kafka."""

from __future__ import annotations

import threading
import uuid

from confluent_kafka import Consumer, KafkaException, Producer

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def librdkafka_producer(bootstrap: str, codec_name: str = "none") -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "compression.type": codec_name,
                     "acks": "all", "linger.ms": 20, "message.max.bytes": 32 << 20,
                     "enable.idempotence": False})


def produce(producer: Producer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Sends and waits for every delivery report; raises on any failed delivery."""
    errors = []
    for key, value in messages:
        producer.produce(topic, value, key=key,
                         on_delivery=lambda error, _msg: error and errors.append(error))
    if producer.flush(60) or errors:
        raise KafkaException(errors[0] if errors else "undelivered messages after 60 s")


class Reader:
    """Follows topics from their start in a background thread with a librdkafka consumer of its
    own (no consumer group offsets): `records()` is what arrived so far, as (topic, partition,
    offset, key, value). `isolation` "read_committed" sees only committed transactions."""

    def __init__(self, bootstrap: str, topics: list[str], isolation: str = "read_committed"):
        self._consumer = Consumer({"bootstrap.servers": bootstrap,
                                   "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                   "isolation.level": isolation, "fetch.wait.max.ms": 10,
                                   "topic.metadata.refresh.interval.ms": 1000})
        self._consumer.subscribe(topics)
        self._records: list[tuple[str, int, int, bytes | None, bytes | None]] = []
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
            for message in self._consumer.consume(500, 0.2):
                if message.error() is None:
                    with self._lock:
                        self._records.append((message.topic(), message.partition(),
                                              message.offset(), message.key(), message.value()))

    def records(self) -> list[tuple[str, int, int, bytes | None, bytes | None]]:
        with self._lock:
            return list(self._records)
