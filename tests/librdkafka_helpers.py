"""A Kafka client that is not ours, for tests: librdkafka through confluent-kafka."""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

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
