"""The worker fed by a Kafka client that is not ours: librdkafka (confluent-kafka), live.

What a producer written from schemas/README.md alone may send: batches in every codec, records
far over the byte cap, any candidate count from 1 to the cap. Every request must be answered
exactly as the contract says, in order, with no compilation after ready.
"""

from __future__ import annotations

import statistics
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.librdkafka_helpers import CODECS, librdkafka_producer, produce
from tests.worker_harness import WorkerTopics
from worker import codec, wire
from tools.producer import generate_events

BIG_RECORDS = (2 << 20, 20 << 20)  # both accepted by the broker, both over the 1 MiB cap
MAX_CANDIDATES = 1024
pytestmark = pytest.mark.kafka_contract


class Reader:
    """A librdkafka consumer of the worker's results and dead letters (no group join)."""

    def __init__(self, bootstrap: str, topics: WorkerTopics):
        self.topics = topics
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING)
                              for t in (topics.results, topics.dead_letters)])
        self.results: dict[str, dict] = {}
        self.letters: list[dict] = []
        self.order: list[str] = []  # request ids of results, in the results topic's order

    def poll_until(self, done, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, (
                f"timed out: {len(self.results)} results, {len(self.letters)} dead letters")
            message = self.consumer.poll(0.1)
            if message is None:
                continue
            assert message.error() is None, message.error()
            decoded = codec.decode_message(message.value())
            if message.topic() == self.topics.dead_letters:
                self.letters.append(decoded)
            else:
                assert decoded["request_id"] not in self.results, "answered twice"
                self.results[decoded["request_id"]] = decoded
                self.order.append(decoded["request_id"])

    def close(self) -> None:
        self.consumer.close()


def wide_request(request_id: str, num_candidates: int) -> bytes:
    return codec.encode_request({
        "schema": wire.REQUEST_SCHEMA, "request_id": request_id, "user_id": 77,
        "history": [{"post_id": 5000 + i, "author_id": 9, "actions": ["favorite"],
                     "surface": 0} for i in range(4)],
        "candidates": [{"post_id": 1 + i, "author_id": 1 + i % 11, "surface": i % 3}
                       for i in range(num_candidates)]})


@pytest.mark.timeout(400)
def test_librdkafka_traffic_every_codec_oversized_records_and_any_candidate_count(
        kafka, worker_factory, tmp_path):
    topics = WorkerTopics.create(kafka)
    data_dir = tmp_path / "not" / "yet" / "there"  # the worker creates its state directory
    worker = worker_factory(topics, extra_args=("--max-candidates", str(MAX_CANDIDATES),
                                                "--data-dir", str(data_dir))).start()
    worker.wait_ready()
    assert data_dir.is_dir()
    compiled_at_ready = worker.metric("ranker_compilations")
    reader = Reader(kafka.bootstrap, topics)
    expected_order: list[str] = []  # valid requests in partition order
    try:
        # 1. A compressed batch of requests in each codec, one producer per codec.
        now = int(time.time() * 1000)
        for i, codec_name in enumerate(CODECS):
            events = list(generate_events(seed=100 + i, count=6))
            messages = [(e.key, codec.encode_request(
                {**e.request, "request_id": f"{codec_name}-{e.request_id}",
                 "timestamp_ms": now})) for e in events]
            produce(librdkafka_producer(kafka.bootstrap, codec_name), topics.requests, messages)
            expected_order += [f"{codec_name}-{e.request_id}" for e in events]

        # 2. Records over the cap, each followed by normal requests on the same partition.
        plain = librdkafka_producer(kafka.bootstrap, "zstd")
        for size in BIG_RECORDS:
            followers = [f"after-{size}-{j}" for j in range(3)]
            produce(plain, topics.requests, [(b"big", b"\x85" + bytes(size - 1))] + [
                (codec.user_key(77), wide_request(rid, 5)) for rid in followers])
            expected_order += followers
        reader.poll_until(lambda: len(reader.results) == len(expected_order)
                          and len(reader.letters) == len(BIG_RECORDS), timeout_s=120)

        # 3. Distinct candidate counts 1..1024, one at a time so each batch holds one request
        #    and its model time is its own.
        counts = sorted({1, 7, 8, 9, 1023, MAX_CANDIDATES} | set(range(13, 1024, 17)))
        for n in counts:
            rid = f"count-{n}"
            produce(plain, topics.requests, [(codec.user_key(77), wide_request(rid, n))])
            expected_order.append(rid)
            reader.poll_until(lambda: rid in reader.results, timeout_s=60)
        warm = []  # the largest request again, warm: the reference for the time bound
        for k in range(5):
            rid = f"warm-{k}"
            produce(plain, topics.requests, [(codec.user_key(77), wide_request(rid, 1024))])
            expected_order.append(rid)
            reader.poll_until(lambda: rid in reader.results, timeout_s=60)
            warm.append(reader.results[rid]["timings"]["model_ms"])
        compiled_at_end = worker.metric("ranker_compilations")
    finally:
        reader.close()

    assert reader.order == expected_order  # every valid request answered once, in order
    for n in counts:
        ranked = reader.results[f"count-{n}"]["ranked"]
        assert len(ranked) == n
        assert len({c["post_id"] for c in ranked}) == n
    assert compiled_at_end == compiled_at_ready, worker.log()
    # Bound: no request of at most 1024 candidates takes longer than 3x the warm 1024 one
    # (+50 ms of scheduling noise); a compilation costs seconds.
    bound_ms = 3 * statistics.median(warm) + 50
    slowest = max(counts, key=lambda n: reader.results[f"count-{n}"]["timings"]["model_ms"])
    slowest_ms = reader.results[f"count-{slowest}"]["timings"]["model_ms"]
    print(f"\nmodel time: warm 1024 candidates {statistics.median(warm):.1f} ms; slowest of "
          f"{len(counts)} counts: {slowest} candidates {slowest_ms:.1f} ms (bound {bound_ms:.0f})")
    assert slowest_ms <= bound_ms

    for letter, size in zip(reader.letters, BIG_RECORDS):
        assert letter["schema"] == wire.DEAD_LETTER_SCHEMA
        assert letter["error"]["code"] == "too_large"
        assert letter["original_size"] == size and letter["original_truncated"] is True
        assert letter["original"] == b"\x85" + bytes(codec.ORIGINAL_PREFIX_BYTES - 1)
    assert worker.alive()
