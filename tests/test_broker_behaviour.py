"""The broker behaviours the worker relies on, or works around, each shown on the test broker
(TEST_BROKER). README's "Broker behaviours the worker relies on" points here.

Where the two brokers differ the test says which way each goes, and why the worker's settings
suit both.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as RdTopicPartition

from tests.conftest import ON_KAFKA, Kafka, new_broker, produce_async
from tests.librdkafka_helpers import librdkafka_producer, produce
from tests.worker_harness import WorkerTopics
from tools.producer import generate_events
from worker import codec
from worker.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.kafka_contract]

_LONG_WAIT_MS = 5000


async def _delivery_delay_s(bootstrap: str, topic: str, fetch_wait_ms: int) -> float:
    """Seconds from a record's ack to its delivery to a consumer already waiting in a fetch."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=fetch_wait_ms,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        waiting = asyncio.ensure_future(consumer.getone())
        await asyncio.sleep(1.0)  # the consumer's fetch is now parked on the broker
        await produce_async(bootstrap, topic, [b"wake"])
        acked = time.monotonic()
        record = await asyncio.wait_for(waiting, timeout=3 * fetch_wait_ms / 1000)
        assert record.value == b"wake"
        return time.monotonic() - acked
    finally:
        await consumer.stop()


def test_a_waiting_fetch_and_a_new_record(kafka: Kafka) -> None:
    """Apache Kafka answers a parked fetch as soon as a record arrives: the worker's fetch
    wait (500 ms, Kafka's default) only bounds idle polling. The embedded broker answers only
    when the wait runs out: everything run on it passes a 10 ms wait (fetch_wait_ms)."""
    topic = kafka.new_topic()
    delay_s = asyncio.run(_delivery_delay_s(kafka.bootstrap, topic, _LONG_WAIT_MS))
    print(f"\n{kafka.broker.kind}: delivered {delay_s * 1000:.0f} ms after the ack "
          f"(fetch wait {_LONG_WAIT_MS} ms)")
    if ON_KAFKA:
        assert kafka.broker.fetch_wait_ms is None
        assert delay_s < _LONG_WAIT_MS / 1000 / 2
    else:
        assert kafka.broker.fetch_wait_ms == 10
        assert delay_s > _LONG_WAIT_MS / 1000 / 10


@pytest.mark.skipif(not ON_KAFKA, reason="the embedded broker takes any session timeout")
def test_a_stock_broker_refuses_short_sessions_and_takes_the_worker_default() -> None:
    """Apache Kafka's group.min.session.timeout.ms (6 s): the test broker lowers it for test
    consumers; the worker's default session timeout needs no such change."""
    default_s = Settings().session_timeout_s

    async def join(bootstrap: str, topic: str, session_ms: int) -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    group_id=f"g-{uuid.uuid4().hex[:6]}",
                                    session_timeout_ms=session_ms, heartbeat_interval_ms=300)
        await consumer.start()
        try:
            await asyncio.wait_for(consumer.getmany(timeout_ms=500), timeout=20)
        finally:
            await consumer.stop()

    with new_broker(config={}) as stock:
        stock.create_topics({"t": 1})
        with pytest.raises(KafkaError, match="InvalidSessionTimeout"):
            asyncio.run(join(stock.bootstrap_servers, "t", 1000))
        asyncio.run(join(stock.bootstrap_servers, "t", int(default_s * 1000)))


async def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    finally:
        await admin.close()
    return {resource[3]: {entry[0]: entry[1] for entry in resource[4]}
            for answer in answers for resource in answer.resources}


async def _replicas(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in described}


async def _topic_names(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


def _read_partition0(bootstrap: str, topic: str, n: int, timeout_s: float,
                     **config: object) -> list[tuple[int, dict]]:
    """(offset, decoded message) of the first `n` messages of the topic's partition 0, read
    from the start by a librdkafka consumer (not ours) with extra `config`."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                       "enable.auto.commit": False, "fetch.wait.max.ms": 10, **config})
    reader.assign([RdTopicPartition(topic, 0, OFFSET_BEGINNING)])
    read, deadline = [], time.monotonic() + timeout_s
    try:
        while len(read) < n and time.monotonic() < deadline:
            message = reader.poll(0.2)
            if message is not None and message.error() is None:
                read.append((message.offset(), codec.decode_message(message.value())))
    finally:
        reader.close()
    return read


@pytest.mark.timeout(240)
def test_the_worker_creates_its_topics_for_the_broker_it_finds(kafka: Kafka, worker_factory):
    """Topics the worker creates: one replica on a one-broker cluster (3 on a larger one),
    `max.message.bytes` at the publish cap (Kafka's 1 MiB default would refuse a dead letter
    that carries a request at the byte cap), and Faust's history changelog compacted. A record
    of exactly the cap then travels in and comes back whole in its dead letter."""
    tag = uuid.uuid4().hex[:8]
    topics = WorkerTopics(f"req-{tag}", f"res-{tag}", f"dlq-{tag}")  # not created: the worker does
    worker = worker_factory(topics).start()
    worker.wait_ready()
    names = [topics.requests, topics.results, topics.dead_letters, topics.engagements]
    changelogs = [t for t in asyncio.run(_topic_names(kafka.bootstrap))
                  if t.startswith(worker.group_id) and t.endswith("changelog")]
    assert len(changelogs) == 1, changelogs
    configs = asyncio.run(_topic_configs(kafka.bootstrap, names + changelogs))
    cap = Settings().max_message_bytes
    for name in names:
        assert configs[name]["max.message.bytes"] == str(codec.publish_cap(cap)), name
    assert configs[changelogs[0]]["cleanup.policy"] == "compact"
    assert asyncio.run(_replicas(kafka.bootstrap, names + changelogs)) == {
        name: {1} for name in names + changelogs}

    at_cap = b"\xc1" * cap  # 0xc1 is never valid msgpack: dead-lettered not_msgpack
    produce(librdkafka_producer(kafka.bootstrap), topics.requests, [(b"k", at_cap)])
    [(_, letter)] = _read_partition0(kafka.bootstrap, topics.dead_letters, 1, timeout_s=60,
                                     **{"fetch.max.bytes": 8 << 20,
                                        "max.partition.fetch.bytes": 8 << 20})
    assert letter["error"]["code"] == "not_msgpack"
    assert letter["original_size"] == cap and not letter["original_truncated"]
    assert letter["original"] == at_cap


@pytest.mark.timeout(240)
@pytest.mark.skipif(not ON_KAFKA, reason="the embedded broker has no transactions: the worker "
                    "refuses exactly_once there (test_exactly_once_fails_fast_with_a_clear_message)")
def test_exactly_once_ranks_and_commits_in_transactions(kafka: Kafka, worker_factory):
    """Exactly-once on Apache Kafka: the worker starts, a read_committed consumer (not ours)
    sees every request answered once, and the results were written in transactions."""
    topics = WorkerTopics.create(kafka)
    worker = worker_factory(topics, extra_args=("--processing-guarantee", "exactly_once"))
    worker.start().wait_ready()
    events = list(generate_events(seed=5, count=40, bad_fraction=0.0))
    produce(librdkafka_producer(kafka.bootstrap), topics.requests,
            [(e.key, e.encode(int(time.time() * 1000))) for e in events])
    seen = _read_partition0(kafka.bootstrap, topics.results, len(events), timeout_s=90,
                            **{"isolation.level": "read_committed"})
    assert sorted(r["request_id"] for _, r in seen) == sorted(e.request_id for e in events), \
        worker.log()[-3000:]
    # Each committed transaction leaves a commit marker, which takes an offset of its own: the
    # partition's end is past its results (output written outside transactions has none).
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "watermarks",
                       "isolation.level": "read_committed"})
    try:
        _, end = reader.get_watermark_offsets(RdTopicPartition(topics.results, 0), timeout=10)
    finally:
        reader.close()
    assert end > len(seen), f"end offset {end} for {len(seen)} results: no commit marker"



def _active_producers(bootstrap: str, topic: str, partition: int) -> list[str]:
    """The partition's active (idempotent or transactional) producers, one line each, as
    Apache Kafka's own kafka-transactions tool lists them."""
    from tools.apache_kafka import LOG_CONFIG, classpath, java_binary

    shown = subprocess.run(
        [java_binary(), f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", classpath(),
         "org.apache.kafka.tools.TransactionsCommand", "--bootstrap-server", bootstrap,
         "describe-producers", "--topic", topic, "--partition", str(partition)],
        capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # Rows start with the producer id; the admin client's logged config comes before them.
    return [line for line in shown.stdout.splitlines() if line.split()[:1] and
            line.split()[0].isdigit()]


@pytest.mark.kafka_contract
@pytest.mark.timeout(240)
def test_the_worker_sends_idempotently_where_the_broker_allows(kafka: Kafka, worker_factory):
    """At least once, the worker's producer is idempotent on Apache Kafka (a retried send is
    not written twice): the results partition lists it as an active producer. The embedded
    broker refuses idempotence; the worker says so once and sends plainly."""
    topics = WorkerTopics.create(kafka)
    worker = worker_factory(topics).start()
    worker.wait_ready()
    events = list(generate_events(seed=6, count=5, bad_fraction=0.0))
    produce(librdkafka_producer(kafka.bootstrap), topics.requests,
            [(e.key, e.encode(int(time.time() * 1000))) for e in events])
    assert len(_read_partition0(kafka.bootstrap, topics.results, 5, timeout_s=60)) == 5
    refused = "refused an idempotent producer" in worker.log_path.read_text()
    if ON_KAFKA:
        assert not refused
        assert len(_active_producers(kafka.bootstrap, topics.results, 0)) == 1
    else:
        assert refused
