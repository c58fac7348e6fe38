"""Shared fixtures: one broker per test session, fresh topics per test, and small aiokafka
helpers to produce and consume raw bytes.

`TEST_BROKER` picks the broker every broker test runs against: `embedded` (tansu, in
memory; the default) or `kafka` (Apache Kafka, tools/apache_kafka.py). A test that starts a
broker of its own calls `new_broker()`, which honours the same setting.

Tests that use the broker (directly or through `kafka`) are marked `kafka` automatically, so
`pytest -m "not kafka"` runs without one. The helpers are sync (they run `asyncio.run`); the
`*_async` functions are the same for code that already runs in an event loop.

    def test_round_trip(kafka):
        topic = kafka.new_topic(partitions=2)
        kafka.produce(topic, [b"a", b"b"])
        assert sorted(r.value for r in kafka.consume(topic, 2)) == [b"a", b"b"]
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import jax
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tools.kafka_io import assignable_partitions
from worker.kafka_clients import topic_config
from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS, Settings
from worker.topics import TopicSpec
from tools.broker import BrokerProcess
from tools.broker.kinds import BROKER_KINDS, broker_class
from tools.launcher import ROOT

# In-process tests share the persistent JAX compilation cache with the workers the tests start
# (tests/worker_harness.py): a shape compiled once, by any test or run, loads in milliseconds.
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# What a produced message may be: a value, or (key, value).
Message = bytes | tuple[bytes | None, bytes]

TEST_BROKER = os.environ.get("TEST_BROKER", "embedded")
if TEST_BROKER not in BROKER_KINDS:
    raise pytest.UsageError(f"TEST_BROKER={TEST_BROKER!r}: choose one of "
                            f"{', '.join(BROKER_KINDS)}")
ON_KAFKA = TEST_BROKER == "kafka"
# Test topics take what the worker's own topics take (worker.kafka_clients.topic_config):
# Apache Kafka's default 1 MiB limit would refuse the over-cap requests tests send.
TEST_TOPIC_CONFIG = topic_config(Settings(), replication_factor=1)

# Apache Kafka refuses consumer sessions under its `group.min.session.timeout.ms` (6 s by
# default); the test broker allows shorter ones so that test consumers and workers that are
# killed leave their group quickly. The worker's own default (6 s) needs no such change.
KAFKA_TEST_CONFIG = {"group.min.session.timeout.ms": "500"}

# Tansu: a join takes ~max(1 s, session/2), and a group's second join after a member left can
# wait 2x the session (measured 4.1 s at 2 s): keep short-lived test consumers at 1 s.
_GROUP_SESSION_MS = 1000
_GROUP_HEARTBEAT_MS = 300
_FETCH_WAIT_MS = EMBEDDED_BROKER_FETCH_WAIT_MS  # the default 500 ms slows every read


class ConsumeTimeout(AssertionError):
    """Fewer records than expected arrived in time; `.records` holds those that did."""

    def __init__(self, message: str, records: list[ConsumerRecord]) -> None:
        super().__init__(message)
        self.records = records


# ---- async helpers ----------------------------------------------------------------------------


async def produce_async(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    *,
    partition: int | None = None,
) -> list[tuple[int, int]]:
    """Send each message and wait for the broker's ack; returns `(partition, offset)` each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                max_request_size=8 << 20)  # room for over-cap test messages
    await producer.start()
    try:
        futures = []
        for message in messages:
            key, value = message if isinstance(message, tuple) else (None, message)
            futures.append(await producer.send(topic, value, key=key, partition=partition))
        metadata = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def consume_async(
    bootstrap: str,
    topic: str,
    n: int,
    *,
    timeout_s: float = 10.0,
    group_id: str | None = None,
) -> list[ConsumerRecord]:
    """The first `n` records of `topic` (all partitions, from the start or the group's offsets).

    Without `group_id`, reads every partition from the beginning with no consumer group (no
    join delay). With `group_id`, joins the group and commits the offsets of what it returns
    (manually: auto-commit never recovers from a tansu restart). Raises `ConsumeTimeout` when
    fewer than `n` arrive within `timeout_s`.
    """
    records: list[ConsumerRecord] = []
    consumer = _consumer(bootstrap, group_id)
    await consumer.start()
    try:
        if group_id is None:
            tps = await _all_partitions(bootstrap, topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(records) < n:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise ConsumeTimeout(
                    f"Got {len(records)} of {n} records from {topic!r} within {timeout_s} s.",
                    records,
                )
            batch = await consumer.getmany(timeout_ms=min(remaining_ms, 200))
            for tp_records in batch.values():
                records.extend(tp_records)
        records = records[:n]
        if group_id is not None:
            await consumer.commit(_next_offsets(records))
    finally:
        await consumer.stop()
    return records


async def read_all_async(
    bootstrap: str, topic: str, *, settle_s: float = 1.0, timeout_s: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of `topic`, read until none arrives for `settle_s` (no consumer group).

    Tansu misreports end offsets, so "the end" is when the topic goes quiet.
    """
    records: list[ConsumerRecord] = []
    consumer = _consumer(bootstrap, None)
    await consumer.start()
    try:
        tps = await _all_partitions(bootstrap, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for tp_records in batch.values():
                if tp_records:
                    records.extend(tp_records)
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records


async def committed_async(bootstrap: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition of `topic` (None: nothing committed)."""
    consumer = _consumer(bootstrap, group_id)
    await consumer.start()
    try:
        tps = await _all_partitions(bootstrap, topic)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


def _consumer(bootstrap: str, group_id: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=_FETCH_WAIT_MS,
        session_timeout_ms=_GROUP_SESSION_MS,
        heartbeat_interval_ms=_GROUP_HEARTBEAT_MS,
    )


async def _all_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    partitions = await assignable_partitions({"bootstrap_servers": bootstrap}, [topic])
    if not partitions:
        raise LookupError(f"Topic {topic!r} has no partitions on the broker; create it first.")
    return partitions


def _next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


# ---- fixtures ---------------------------------------------------------------------------------


@dataclass
class Kafka:
    """The session broker plus sync helpers bound to it."""

    broker: BrokerProcess

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def new_topic(self, partitions: int = 1, *, prefix: str = "test") -> str:
        """Create a topic with a unique name and `partitions` partitions; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.broker.create_topics([TopicSpec(name, partitions, TEST_TOPIC_CONFIG)])
        return name

    def produce(
        self, topic: str, messages: Iterable[Message], *, partition: int | None = None
    ) -> list[tuple[int, int]]:
        return asyncio.run(produce_async(self.bootstrap, topic, messages, partition=partition))

    def consume(
        self, topic: str, n: int, *, timeout_s: float = 10.0, group_id: str | None = None
    ) -> list[ConsumerRecord]:
        return asyncio.run(
            consume_async(self.bootstrap, topic, n, timeout_s=timeout_s, group_id=group_id)
        )

    def read_all(
        self, topic: str, *, settle_s: float = 1.0, timeout_s: float = 30.0
    ) -> list[ConsumerRecord]:
        return asyncio.run(
            read_all_async(self.bootstrap, topic, settle_s=settle_s, timeout_s=timeout_s)
        )

    def committed(self, group_id: str, topic: str) -> dict[int, int | None]:
        return asyncio.run(committed_async(self.bootstrap, group_id, topic))


def new_broker(**kwargs) -> BrokerProcess:
    """A broker of the kind TEST_BROKER names (not started); `kwargs` go to its class."""
    if ON_KAFKA:
        kwargs.setdefault("config", KAFKA_TEST_CONFIG)
    return broker_class(TEST_BROKER)(**kwargs)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[BrokerProcess]:
    """One broker on a free port for the whole session (stopped at the end).

    A test that pauses or restarts it must leave it running (resume; restart keeps, or on the
    embedded broker recreates, the topics created through it).
    """
    with new_broker() as broker:
        yield broker


@pytest.fixture
def kafka(kafka_broker: BrokerProcess) -> Kafka:
    if kafka_broker.is_paused:
        kafka_broker.resume()
    if not kafka_broker.is_running:
        kafka_broker.restart()
    return Kafka(kafka_broker)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Runs before `-m` filtering, so `-m "not kafka"` also drops tests that only use the fixture.
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture
def worker_factory(kafka: Kafka):
    """Builds `WorkerProcess`es on the session broker; every one is killed at teardown."""
    from tests.worker_harness import WorkerProcess

    made: list[WorkerProcess] = []

    def make(topics, **kwargs) -> WorkerProcess:
        worker = WorkerProcess(kafka.bootstrap, topics, **kwargs)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


@pytest.fixture(scope="session")
def tiny_runner():
    """One small model (the TINY config, seed 0) for tests that need a runner but not a
    particular one: built and compiled once per session."""
    from phoenix.runner import RankingRunner
    from tests.phoenix_helpers import TINY

    return RankingRunner.create(TINY, seed=0)
