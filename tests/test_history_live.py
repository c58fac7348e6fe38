"""Server-side history through a real broker and worker: engagements in, a v2 request without
history ranked exactly as the same request carrying that history."""

from __future__ import annotations

import random
import time

from phoenix.actions import ACTION_NAMES
from tests.worker_harness import WorkerTopics
from worker import codec

S = 32  # the demo checkpoint's history length
ITEM_KEYS = ("post_id", "author_id", "actions", "surface")


def engagements_of(user: int, n: int, rng: random.Random, start_ms: int) -> list[dict]:
    """n engagements of `user` with distinct times, in a shuffled (late-arriving) order."""
    times = rng.sample(range(start_ms, start_ms + 100_000), n)
    items = [{"schema": codec.ENGAGEMENT_SCHEMA, "user_id": user,
              "post_id": rng.randint(1, 5000), "author_id": rng.randint(1, 300),
              "actions": rng.sample(ACTION_NAMES, rng.randint(0, 4)),
              "surface": rng.randrange(16), "timestamp_ms": t} for t in times]
    return items


def wire_history(items: list[dict]) -> list[dict]:
    """What a v1 request would carry: the S most recent, oldest first."""
    ordered = sorted(items, key=lambda item: item["timestamp_ms"])[-S:]
    return [{key: item[key] for key in ITEM_KEYS} for item in ordered]


def request(schema: str, request_id: str, user: int, candidates: list[dict],
            history: list[dict] | None = None) -> dict:
    message = {"schema": schema, "request_id": request_id, "user_id": user,
               "candidates": candidates}
    if history is not None:
        message["history"] = history
    return message


def wait_for_metric(worker, name: str, value: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.metric(name) < value:
        assert time.monotonic() < deadline, f"{name} = {worker.metric(name)}, waited for {value}"
        time.sleep(0.1)


def test_request_without_history_ranks_like_the_request_carrying_it(kafka, worker_factory):
    rng = random.Random(16)
    topics = WorkerTopics.create(kafka, partitions=2)
    worker = worker_factory(topics, partitions=2).start()
    worker.wait_ready()
    users = [rng.randint(1, 2**64 - 1) for _ in range(6)]
    start_ms = int(time.time() * 1000) - 200_000
    items = {user: engagements_of(user, rng.choice([5, 40]), rng, start_ms) for user in users}
    sent = [item for user in users for item in items[user]]
    resent = rng.sample(sent, 20)  # a producer's retries: ignored, nothing changes
    bad = {**sent[0], "actions": ["click", "click"]}
    kafka.produce(topics.engagements, [(codec.user_key(e["user_id"]), codec.encode_request(e))
                                       for e in sent + [bad] + resent])
    wait_for_metric(worker, 'ranker_engagements_total{outcome="applied"}', len(sent))
    wait_for_metric(worker, 'ranker_engagements_total{outcome="ignored"}', len(resent))

    unknown = rng.randint(1, 2**64 - 1)
    candidates = [{"post_id": p, "author_id": rng.randint(1, 300), "surface": rng.randrange(16)}
                  for p in rng.sample(range(1, 5000), 8)]
    messages = []
    for i, user in enumerate(users + [unknown]):
        history = wire_history(items.get(user, []))
        messages += [request(codec.REQUEST_SCHEMA, f"v1-{i}", user, candidates, history),
                     request(codec.REQUEST_SCHEMA_V2, f"v2-{i}", user, candidates)]
    kafka.produce(topics.requests, [(codec.user_key(m["user_id"]), codec.encode_request(m))
                                    for m in messages])
    results = {r["request_id"]: r for r in (
        codec.decode_message(record.value)
        for record in kafka.consume(topics.results, len(messages), timeout_s=30))}

    for i, user in enumerate(users + [unknown]):
        explicit, from_table = results[f"v1-{i}"], results[f"v2-{i}"]
        assert explicit["schema"] == "ranking-result.v1" and "history_source" not in explicit
        assert from_table["schema"] == "ranking-result.v2"
        assert from_table["history_source"] == "table"
        assert from_table["history_items"] == min(S, len(items.get(user, [])))
        assert from_table["ranked"] == explicit["ranked"], user  # ids, scores, probabilities
    letters = [codec.decode_message(r.value) for r in kafka.consume(topics.dead_letters, 1)]
    assert letters[0]["error"]["code"] == "invalid"
    assert letters[0]["error"]["field"] == "actions[1]"
    assert letters[0]["source"]["topic"] == topics.engagements
    lag = worker.metric("ranker_engagement_visible_lag_seconds_count")
    assert lag == len(sent)
    assert worker.alive()
