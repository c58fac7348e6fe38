"""The broker kinds by name, for `make broker`, the demo, the benchmark and the tests:
"embedded" (tansu, in memory) or "kafka" (Apache Kafka, KRaft)."""

from __future__ import annotations

from tools.apache_kafka import ApacheKafka
from tools.broker import BrokerProcess, EmbeddedBroker

BROKER_KINDS = ("embedded", "kafka")


def broker_class(kind: str) -> type[BrokerProcess]:
    """`EmbeddedBroker` for "embedded" (tansu, in memory), `ApacheKafka` for "kafka"."""
    if kind == "embedded":
        return EmbeddedBroker
    if kind == "kafka":
        return ApacheKafka
    raise ValueError(f"unknown broker kind {kind!r}; choose one of {', '.join(BROKER_KINDS)}")
