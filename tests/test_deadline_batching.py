"""The batch policies live: a request whose deadline the queue ahead makes impossible is
dead-lettered `expired` without reaching the model (deadline policy), and the fixed policy
still ranks every request."""

from __future__ import annotations

import time

import msgpack
import pytest

from tests.worker_harness import WorkerTopics, wait_for_metric
from tools.producer import generate_events
from worker import codec


def _with_deadline(event, now_ms: int, deadline_ms: int) -> bytes:
    message = msgpack.unpackb(event.encode(now_ms), raw=False)
    message["deadline_ms"] = deadline_ms
    return msgpack.packb(message)


@pytest.mark.kafka_contract
def test_a_request_that_cannot_meet_its_deadline_is_shed_without_model_time(
        kafka, worker_factory):
    """The worker's cost model predicts every call 1000x slower than it runs (a fault: a
    demo-sized call then takes over a second), so a request due 500 ms after it was sent is
    predicted to finish after its deadline: it is dead-lettered at once, unranked, saying so.
    Requests without a deadline are never shed: they are ranked."""
    topics = WorkerTopics.create(kafka)
    worker = worker_factory(topics, entry=("-m", "tests.fault_entry"),
                            extra_args=("--fault-predict-slow", "1000")).start()
    worker.wait_ready()
    assert "fault: the cost model predicts every call 1000x slower" in worker.log()
    due, *plain = list(generate_events(seed=31, count=11))
    now = int(time.time() * 1000)
    kafka.produce(topics.requests, [(due.key, _with_deadline(due, now, now + 500))])
    letter, = [codec.decode_message(r.value)
               for r in kafka.consume(topics.dead_letters, 1, timeout_s=60)]
    assert letter["request_id"] == due.request_id, letter["error"]
    assert letter["error"]["code"] == "expired"
    assert "predicted to finish" in letter["error"]["message"], letter["error"]["message"]
    assert worker.metric("ranker_shed_total") == 1
    assert worker.metric("ranker_batch_size_count") == 0  # no batch reached the model
    kafka.produce(topics.requests, [(e.key, e.encode(int(time.time() * 1000))) for e in plain])
    results = kafka.consume(topics.results, len(plain), timeout_s=60)
    assert {codec.decode_message(r.value)["request_id"] for r in results} == {
        e.request_id for e in plain}
    wait_for_metric(worker, "ranker_batch_size_sum", len(plain))
    assert worker.metric("ranker_batch_size_sum") == len(plain)  # ranked: those only


@pytest.mark.kafka_contract
def test_the_fixed_policy_ranks_every_request(kafka, worker_factory):
    topics = WorkerTopics.create(kafka, partitions=2)
    worker = worker_factory(topics, partitions=2,
                            extra_args=("--batch-policy", "fixed")).start()
    worker.wait_ready()
    events = list(generate_events(seed=33, count=200))
    now = int(time.time() * 1000)
    kafka.produce(topics.requests, [(e.key, e.encode(now)) for e in events])
    results = kafka.consume(topics.results, len(events), timeout_s=60)
    assert sorted(codec.decode_message(r.value)["request_id"] for r in results) == sorted(
        e.request_id for e in events)
    wait_for_metric(worker, "ranker_batch_size_sum", len(events))
    # No scheduler ran: it predicts each batch's time.
    assert worker.metric("ranker_batch_seconds_count") == 0
    assert worker.metric("ranker_batch_size_sum") == len(events)


@pytest.mark.kafka_contract
def test_the_deadline_policy_predicts_every_batch(kafka, worker_factory):
    topics = WorkerTopics.create(kafka)
    worker = worker_factory(topics).start()
    worker.wait_ready()
    events = list(generate_events(seed=34, count=100))
    now = int(time.time() * 1000)
    kafka.produce(topics.requests, [(e.key, e.encode(now)) for e in events])
    kafka.consume(topics.results, len(events), timeout_s=60)
    wait_for_metric(worker, "ranker_batch_size_sum", len(events))
    batches = worker.metric("ranker_batch_size_count")
    assert worker.metric('ranker_batch_seconds_count{kind="predicted"}') == batches > 0
    assert worker.metric('ranker_batch_seconds_count{kind="actual"}') == batches
