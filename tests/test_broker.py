"""The test broker (TEST_BROKER: the embedded one or Apache Kafka): lifecycle, explicit topics,
round trips, pause/resume, restart, and the broker CLI for both kinds."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.conftest import (ON_KAFKA, TEST_BROKER, Kafka, committed_async, consume_async,
                            new_broker, produce_async, read_all_async)
from worker import topics as wire_topics
from tools.broker import BrokerStartError, EmbeddedBroker, free_port
from worker.topics import TopicError, TopicSpec, ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.kafka_contract]

REPO = Path(__file__).resolve().parents[1]


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _partitions_seen_by_client(bootstrap: str, topic: str) -> set[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set((await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
                   or ())  # a consumer's own metadata: the view every client gets
    finally:
        await consumer.stop()


def test_broker_starts_serves_and_stops() -> None:
    with new_broker() as broker:
        assert broker.is_running
        assert _accepts_connections(broker.host, broker.port)
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        pid = broker.pid
    assert not broker.is_running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no such process any more
    assert not _accepts_connections(broker.host, broker.port)


def test_start_refuses_a_taken_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerStartError, match=f"Port {port} .* already in use"):
            new_broker(port=port).start()


def test_start_reports_a_broker_that_exits(tmp_path: Path) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'cannot start: no storage' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BrokerStartError, match=r"exited with code 3(.|\n)*no storage"):
        EmbeddedBroker(binary=str(fake), start_timeout_s=5).start()


def test_start_times_out_on_a_broker_that_never_listens(tmp_path: Path) -> None:
    fake = tmp_path / "silent-tansu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    broker = EmbeddedBroker(binary=str(fake), start_timeout_s=0.5)
    with pytest.raises(BrokerStartError, match="did not open"):
        broker.start()
    assert not broker.is_running  # the stuck process was killed, not left behind


def test_topics_get_the_requested_partition_counts(kafka: Kafka) -> None:
    suffix = str(free_port())  # unique per run, the session broker is shared
    wanted = {f"p1-{suffix}": 1, f"p3-{suffix}": 3, f"p7-{suffix}": 7}
    kafka.broker.create_topics([TopicSpec(name, n) for name, n in wanted.items()])
    assert kafka.broker.partition_counts(wanted) == wanted
    for name, n in wanted.items():
        assert asyncio.run(_partitions_seen_by_client(kafka.bootstrap, name)) == set(range(n))


def test_creating_an_existing_topic_is_idempotent_only_with_the_same_count(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=2)
    kafka.broker.create_topics({topic: 2})  # same count: fine
    with pytest.raises(TopicError, match=f"'{topic}' has 2 partitions, not the 5"):
        kafka.broker.create_topics({topic: 5})


def test_ensure_topics_works_against_any_bootstrap(kafka: Kafka) -> None:
    # The worker creates its topics itself through this function, before Faust subscribes.
    name = f"ensured-{free_port()}"
    created = asyncio.run(ensure_topics(kafka.bootstrap, [TopicSpec(name, 6)]))
    assert created == {name: 6}
    assert kafka.broker.partition_counts([name]) == {name: 6}


def test_partition_counts_does_not_create_missing_topics(kafka: Kafka) -> None:
    missing = f"never-created-{free_port()}"
    assert kafka.broker.partition_counts([missing]) == {}
    assert kafka.broker.partition_counts([missing]) == {}  # still absent, not auto-created


@pytest.mark.parametrize("partitions", [0, -1], ids=["zero", "negative"])
def test_topic_spec_rejects_bad_partition_counts(partitions: int) -> None:
    with pytest.raises(TopicError, match=f"{partitions} partitions; use 1 or more"):
        TopicSpec("t", partitions)


def test_produce_consume_round_trip(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=3)
    sent = [(i.to_bytes(8, "big"), f"value-{i}".encode()) for i in range(30)]
    placed = kafka.produce(topic, sent)
    records = kafka.consume(topic, len(sent))
    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    assert {p for p, _ in placed} == {0, 1, 2}  # keys spread over all partitions
    # Same key, same partition: the ordering guarantee per user rests on this.
    partition_of = {r.key: r.partition for r in records}
    again = kafka.produce(topic, sent[:5])
    assert [p for p, _ in again] == [partition_of[k] for k, _ in sent[:5]]


def test_consume_with_a_group_commits_what_it_returned(kafka: Kafka) -> None:
    topic = kafka.new_topic(partitions=1)
    kafka.produce(topic, [b"a", b"b", b"c"])
    first = kafka.consume(topic, 2, group_id=f"g-{topic}")
    assert [r.value for r in first] == [b"a", b"b"]
    assert kafka.committed(f"g-{topic}", topic) == {0: 2}
    rest = kafka.consume(topic, 1, group_id=f"g-{topic}")
    assert [r.value for r in rest] == [b"c"]


def test_pause_blocks_requests_and_resume_restores_them() -> None:
    with new_broker() as broker:
        broker.create_topics({"paused": 1})
        broker.pause()
        assert broker.is_paused and broker.is_running

        async def produce_with_short_timeout() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=1000
            )
            try:
                await asyncio.wait_for(producer.start(), timeout=3)
                await asyncio.wait_for(producer.send_and_wait("paused", b"x"), timeout=3)
            finally:
                await producer.stop()

        with pytest.raises((KafkaError, asyncio.TimeoutError)):
            asyncio.run(produce_with_short_timeout())
        broker.resume()
        assert not broker.is_paused
        asyncio.run(produce_async(broker.bootstrap_servers, "paused", [b"after"]))
        values = [r.value for r in asyncio.run(read_all_async(broker.bootstrap_servers, "paused"))]
        assert values[-1] == b"after"


@pytest.mark.skipif(ON_KAFKA, reason="Apache Kafka keeps its data across a restart "
                    "(test_restart_keeps_records_and_committed_offsets)")
def test_restart_loses_data_and_recreates_topics() -> None:
    with new_broker() as broker:
        broker.create_topics({"kept": 3})
        asyncio.run(produce_async(broker.bootstrap_servers, "kept", [b"before"]))
        old_pid, port = broker.pid, broker.port
        broker.restart()
        assert broker.pid != old_pid and broker.port == port
        assert broker.partition_counts(["kept"]) == {"kept": 3}
        assert asyncio.run(read_all_async(broker.bootstrap_servers, "kept", settle_s=0.3)) == []
        asyncio.run(produce_async(broker.bootstrap_servers, "kept", [b"after"]))
        records = asyncio.run(consume_async(broker.bootstrap_servers, "kept", 1))
        assert [r.value for r in records] == [b"after"]


@pytest.mark.skipif(not ON_KAFKA, reason="the embedded broker keeps everything in memory: a "
                    "restart loses it (test_restart_loses_data_and_recreates_topics)")
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_records_and_committed_offsets(how: str) -> None:
    with new_broker() as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topics({"kept": 3})
        asyncio.run(produce_async(bootstrap, "kept", [b"a", b"b", b"c"], partition=1))
        asyncio.run(consume_async(bootstrap, "kept", 2, group_id="g-kept"))  # commits a, b
        old_pid = broker.pid
        if how == "sigkill":
            broker.kill()
        broker.restart()
        assert broker.pid != old_pid
        assert broker.partition_counts(["kept"]) == {"kept": 3}
        values = [r.value for r in asyncio.run(read_all_async(bootstrap, "kept", settle_s=0.3))]
        assert values == [b"a", b"b", b"c"]
        assert asyncio.run(committed_async(bootstrap, "g-kept", "kept"))[1] == 2
        rest = asyncio.run(consume_async(bootstrap, "kept", 1, group_id="g-kept"))
        assert [r.value for r in rest] == [b"c"]


def test_cli_creates_the_wire_topics_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.broker", "--kind", TEST_BROKER, "--port", str(port),
         "--partitions", "2", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # blocks until ready (or exit: empty string)
        assert f"bootstrap 127.0.0.1:{port}" in banner, banner
        probe = new_broker(port=port)  # not started: only used to query the CLI's broker
        assert probe.partition_counts(wire_topics.DEFAULT_TOPICS) == {
            name: 2 for name in wire_topics.DEFAULT_TOPICS
        }
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert "stopped" in process.stdout.read()
        deadline = time.monotonic() + 5
        while _accepts_connections("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _accepts_connections("127.0.0.1", port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
