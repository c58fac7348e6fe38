"""Server-side history through a real broker and worker: engagements in, a v2 request without
history ranked exactly as the same request carrying that history."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from tests.conftest import ON_KAFKA
from tests.librdkafka_helpers import Reader
from tests.worker_harness import WorkerTopics, wait_for_metric
from worker import codec, history, wire
from worker.topics import history_changelog_topic

S = 32  # the demo checkpoint's history length
ITEM_KEYS = ("post_id", "author_id", "actions", "surface")


def engagements_of(user: int, n: int, rng: random.Random, start_ms: int) -> list[dict]:
    """n engagements of `user` with distinct times, in a shuffled (late-arriving) order."""
    times = rng.sample(range(start_ms, start_ms + 100_000), n)
    items = [{"schema": wire.ENGAGEMENT_SCHEMA, "user_id": user,
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


def assert_same_ranking(got: dict, expected: dict) -> None:
    """The same candidates in the same order with the same scores and probabilities, up to
    float32 rounding: two requests ranked in batches of different padded shapes can differ
    in the 7th digit (within one batch, and offline, they are bit-identical)."""
    assert [c["post_id"] for c in got["ranked"]] == [c["post_id"] for c in expected["ranked"]]
    np.testing.assert_allclose([c["score"] for c in got["ranked"]],
                               [c["score"] for c in expected["ranked"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [[c["probabilities"][a] for a in ACTION_NAMES] for c in got["ranked"]],
        [[c["probabilities"][a] for a in ACTION_NAMES] for c in expected["ranked"]],
        atol=1e-6)


def committed_total(kafka, group_id: str, topic: str) -> int:
    """How many records of the fresh `topic` `group_id` has committed (the sum of its
    partitions' committed offsets)."""
    return sum(o or 0 for o in kafka.committed(group_id, topic).values())


def wait_committed(kafka, group_id: str, topic: str, count: int,
                   timeout_s: float = 30.0) -> None:
    """Waits until `group_id` has committed `count` records of the fresh `topic` (the sum of
    its partitions' committed offsets)."""
    deadline = time.monotonic() + timeout_s
    while (done := committed_total(kafka, group_id, topic)) < count:
        assert time.monotonic() < deadline, f"{group_id} committed {done} of {count} on {topic}"
        time.sleep(0.2)


@dataclasses.dataclass
class WorkerGroup:
    """Fresh topics and one consumer group for the workers of a test."""

    topics: WorkerTopics
    group_id: str
    partitions: int
    worker_factory: Callable
    extra_args: tuple[str, ...] = ()

    @classmethod
    def create(cls, kafka, worker_factory, rng: random.Random, partitions: int = 2,
               extra_args: tuple[str, ...] = ()) -> "WorkerGroup":
        return cls(WorkerTopics.create(kafka, partitions=partitions),
                   f"hist-{rng.randrange(10**6)}", partitions, worker_factory, extra_args)

    def start(self, *extra_args: str):
        """A worker joining the group, started (not yet ready)."""
        return self.worker_factory(self.topics, partitions=self.partitions,
                                   group_id=self.group_id,
                                   extra_args=self.extra_args + extra_args).start()

    def ready(self, *extra_args: str):
        worker = self.start(*extra_args)
        worker.wait_ready()
        return worker


def users_with_engagements(rng: random.Random, count: int, per_user: int
                           ) -> tuple[list[int], dict[int, list[dict]]]:
    """`count` random users, each with `per_user` engagements from the last 200 s."""
    users = [rng.randint(1, 2**64 - 1) for _ in range(count)]
    start_ms = int(time.time() * 1000) - 200_000
    return users, {user: engagements_of(user, per_user, rng, start_ms) for user in users}


def produce_engagements(kafka, topics: WorkerTopics, engagements: list[dict]) -> None:
    kafka.produce(topics.engagements, [(codec.user_key(e["user_id"]), codec.encode_request(e))
                                       for e in engagements])


def test_request_without_history_ranks_like_the_request_carrying_it(kafka, worker_factory):
    rng = random.Random(16)
    group = WorkerGroup.create(kafka, worker_factory, rng)
    topics = group.topics
    worker = group.ready()
    users = [rng.randint(1, 2**64 - 1) for _ in range(6)]
    start_ms = int(time.time() * 1000) - 200_000
    items = {user: engagements_of(user, rng.choice([5, 40]), rng, start_ms) for user in users}
    sent = [item for user in users for item in items[user]]
    resent = rng.sample(sent, 20)  # a producer's retries: ignored, nothing changes
    bad = {**sent[0], "actions": ["click", "click"]}
    produce_engagements(kafka, topics, sent + [bad] + resent)
    wait_for_metric(worker, 'ranker_engagements_total{outcome="applied"}', len(sent))
    wait_for_metric(worker, 'ranker_engagements_total{outcome="ignored"}', len(resent))

    unknown = rng.randint(1, 2**64 - 1)
    candidates = [{"post_id": p, "author_id": rng.randint(1, 300), "surface": rng.randrange(16)}
                  for p in rng.sample(range(1, 5000), 8)]
    messages = []
    for i, user in enumerate(users + [unknown]):
        history = wire_history(items.get(user, []))
        messages += [request(wire.REQUEST_SCHEMA, f"v1-{i}", user, candidates, history),
                     request(wire.REQUEST_SCHEMA_V2, f"v2-{i}", user, candidates)]
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
        assert_same_ranking(from_table, explicit)
    letters = [codec.decode_message(r.value) for r in kafka.consume(topics.dead_letters, 1)]
    assert letters[0]["error"]["code"] == "invalid"
    assert letters[0]["error"]["field"] == "actions[1]"
    assert letters[0]["source"]["topic"] == topics.engagements
    assert worker.metric("ranker_engagement_visible_lag_seconds_count") == len(sent)
    assert worker.alive()

    # Freshness: engagements stamped with their send time, one at a time, idle worker.
    before_sum = worker.metric("ranker_engagement_visible_lag_seconds_sum")
    for i in range(20):
        fresh = {**sent[0], "post_id": 10_000 + i, "timestamp_ms": int(time.time() * 1000)}
        produce_engagements(kafka, topics, [fresh])
    wait_for_metric(worker, "ranker_engagement_visible_lag_seconds_count", len(sent) + 20)
    mean_ms = (worker.metric("ranker_engagement_visible_lag_seconds_sum") - before_sum) / 20 * 1000
    print(f"\nengagement timestamp -> visible in the table: mean {mean_ms:.1f} ms over 20")
    assert mean_ms < 5000


# ---- several workers, crashes -----------------------------------------------------------------


def rank_all(kafka, topics, messages: list[dict], timeout_s: float = 60) -> dict[str, dict]:
    kafka.produce(topics.requests, [(codec.user_key(m["user_id"]), codec.encode_request(m))
                                    for m in messages])
    wanted = {m["request_id"] for m in messages}
    deadline = time.monotonic() + timeout_s
    while True:  # results of earlier rounds are in the topic too: read until ours are all in
        found = {r["request_id"]: r for r in (codec.decode_message(record.value) for record
                 in kafka.read_all(topics.results, settle_s=0.3)) if r["request_id"] in wanted}
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def changelog_writes(bootstrap: str, changelog: str, at_least: int, settle_s: float = 1.5,
                     timeout_s: float = 60.0) -> dict[bytes, list[bytes]]:
    """Each key's values in the history changelog, in log order, as a `read_committed`
    librdkafka reader sees them once it has `at_least` records and no more arrive for
    `settle_s`."""
    with Reader(bootstrap, [changelog]) as reader:
        deadline, seen, quiet_since = time.monotonic() + timeout_s, -1, time.monotonic()
        while seen < at_least or time.monotonic() - quiet_since < settle_s:
            assert time.monotonic() < deadline, (
                f"{changelog}: {seen} records of at least {at_least} after {timeout_s} s")
            if len(reader.records()) != seen:
                seen, quiet_since = len(reader.records()), time.monotonic()
            time.sleep(0.1)
        records = reader.records()
    writes: dict[bytes, list[bytes]] = {}
    for record in records:  # one partition per key, read in offset order
        writes.setdefault(record.key, []).append(record.value)
    return writes


def assert_changelog_ends_with_each_history(bootstrap: str, group_id: str, users: list[int],
                                            items: dict[int, list[dict]]) -> None:
    """The changelog holds each user's writes in the order they were made (one engagement
    more each time), the last one the user's whole history: what a recovery rebuilds."""
    writes = changelog_writes(bootstrap, history_changelog_topic(group_id),
                              at_least=sum(len(items[user]) for user in users))
    for user in users:
        lengths = [len(history.items(value)) for value in writes[codec.user_key(user)]]
        assert lengths == list(range(1, len(items[user]) + 1)), (
            f"user {user}: history lengths in changelog order {lengths}")
        last = history.items(writes[codec.user_key(user)][-1])
        assert list(last["timestamp_ms"]) == sorted(e["timestamp_ms"] for e in items[user])


def engagements_total(*workers) -> float:
    return sum(w.metric("ranker_engagements_total") for w in workers if w.alive())


@pytest.mark.kafka_contract
@pytest.mark.parametrize("guarantee", [
    "at_least_once",
    pytest.param("exactly_once", marks=[
        pytest.mark.skipif(not ON_KAFKA, reason="the embedded broker has no transactions (the "
                           "worker refuses exactly_once there: tests/test_worker_e2e.py)")])])
def test_two_workers_answer_their_users_and_the_survivor_recovers_before_ranking(
        kafka, worker_factory, guarantee):
    """Each worker answers its own users with their full history; after one is killed, the
    other rebuilds the dead one's partitions from the changelog before it ranks any request
    of those users (they were queued before the takeover), so nothing is lost: each user ranks
    as before the kill. In both guarantees (under exactly-once the changelog is read committed
    only, and a user's writes reach it in the order they were made)."""
    rng = random.Random(7)
    group = WorkerGroup.create(kafka, worker_factory, rng, partitions=4,
                               extra_args=("--processing-guarantee", guarantee))
    group.group_id += f"-{guarantee}"  # the same users in each guarantee, a table of its own
    topics = group.topics
    a, b = (group.start("--worker-id", name) for name in ("a", "b"))
    a.wait_ready()
    b.wait_ready()
    users, items = users_with_engagements(rng, 40, 40)
    produce_engagements(kafka, topics, [e for user in users for e in items[user]])
    deadline = time.monotonic() + 60
    while engagements_total(a, b) < 40 * 40:
        assert time.monotonic() < deadline, engagements_total(a, b)
        time.sleep(0.2)
    candidates = [{"post_id": p, "author_id": rng.randint(1, 300), "surface": rng.randrange(16)}
                  for p in rng.sample(range(1, 5000), 8)]

    def round_of(tag: str) -> dict[int, dict]:
        messages = [request(wire.REQUEST_SCHEMA_V2, f"{tag}-{i}", user, candidates)
                    for i, user in enumerate(users)]
        results = rank_all(kafka, topics, messages, timeout_s=90)
        assert len(results) == len(users), (f"{tag}: {len(results)} of {len(users)} answered",
                                            a.log(30000))
        return {r["user_id"]: r for r in results.values()}

    shared = round_of("shared")
    by_worker = {w: {u for u, r in shared.items() if r["worker_id"] == w} for w in "ab"}
    assert by_worker["a"] and by_worker["b"]  # both served, each its own users
    assert {r["history_items"] for r in shared.values()} == {S}
    assert_changelog_ends_with_each_history(kafka.bootstrap, group.group_id, users, items)

    killed_at = time.monotonic()
    b.kill()  # SIGKILL: its partitions go to a, whose table never held those users
    after = round_of("after-kill")
    took_s = time.monotonic() - killed_at
    print(f"\nhistory takeover: b had {len(by_worker['b'])} of {len(users)} users; all answered "
          f"by a with full history {took_s:.1f} s after the kill")
    assert {r["worker_id"] for r in after.values()} == {"a"}
    short = {user: after[user]["history_items"] for user in users
             if after[user]["history_items"] != S}
    assert not short, (f"ranked with short history (user: items; b's users: "
                       f"{sorted(by_worker['b'])}): {short}", a.log(60000))
    for user in users:
        assert after[user]["history_source"] == "table"
        assert_same_ranking(after[user], shared[user])


@pytest.mark.kafka_contract
def test_sigkill_while_ingesting_then_restart_keeps_exactly_what_was_produced(
        kafka, worker_factory):
    """Engagements are applied at least once: after a SIGKILL mid-stream and a restart (the
    table rebuilt from its changelog, uncommitted engagements read again and ignored as
    duplicates), every user's history is exactly what was produced."""
    rng = random.Random(9)
    group = WorkerGroup.create(kafka, worker_factory, rng)
    topics = group.topics
    first = group.ready()
    users, items = users_with_engagements(rng, 30, 60)
    produced = [items[u][i] for i in range(60) for u in users]
    half = len(produced) // 2
    produce_engagements(kafka, topics, produced[:half])
    wait_for_metric(first, "ranker_engagements_total", half)
    # Committed (every 0.5 s), so the restart must take the first half from the changelog.
    wait_committed(kafka, group.group_id, topics.engagements, half)
    produce_engagements(kafka, topics, produced[half:])
    deadline = time.monotonic() + 60
    while (seen := first.metric("ranker_engagements_total")) < half + half // 3:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    first.kill()
    first.wait()
    # What the restart must read again: every engagement past the killed worker's last commit
    # (the worker kept applying after `seen` was read, so `seen` alone does not say it).
    at_kill = committed_total(kafka, group.group_id, topics.engagements)
    second = group.ready()  # /ready waits for the changelog to be read
    # Every engagement applied and committed (the worker commits what it has applied): by the
    # offsets, not by the clock (a rejoining group can pause for seconds after a kill).
    wait_committed(kafka, group.group_id, topics.engagements, len(produced), timeout_s=90)
    last = second.metric("ranker_engagements_total")
    ignored = second.metric('ranker_engagements_total{outcome="ignored"}')
    print(f"\nhistory crash: killed after {seen:.0f}+ of {len(produced)} engagements applied "
          f"and {at_kill} committed; the restarted worker read {last:.0f}, {ignored:.0f} of "
          f"them re-deliveries (ignored)")
    assert half <= at_kill < len(produced), at_kill
    assert last < len(produced)  # the committed first half came from the changelog
    assert last >= len(produced) - at_kill  # and everything past the last commit was read again
    assert_v2_ranks_as_v1_with_history(kafka, topics, users, items, rng)


def test_rocksdb_store_serves_the_same_history(kafka, worker_factory, tmp_path):
    """RANKER_HISTORY_STORE=rocksdb: the table in RocksDB files under --data-dir, read from the
    decode thread through rocksdict, and kept across a restart: the new worker starts from the
    persisted offsets (Faust refuses to start when they are past the changelog's end as the
    broker reports it, which tansu's listed end offsets alone would make it do)."""
    rng = random.Random(11)
    group = WorkerGroup.create(kafka, worker_factory, rng, extra_args=(
        "--history-store", "rocksdb", "--data-dir", str(tmp_path / "state")))
    topics = group.topics
    worker = group.ready()
    users, items = users_with_engagements(rng, 8, 40)
    produce_engagements(kafka, topics, [e for u in users for e in items[u]])
    wait_for_metric(worker, 'ranker_engagements_total{outcome="applied"}', 8 * 40)
    assert_v2_ranks_as_v1_with_history(kafka, topics, users, items, rng)
    assert list((tmp_path / "state").rglob("user-history-*.db")), "no RocksDB files"
    assert worker.stop() == 0
    again = group.ready()
    assert_v2_ranks_as_v1_with_history(kafka, topics, users, items, rng)
    assert again.metric("ranker_engagements_total") == 0  # all from the RocksDB files
    assert again.stop() == 0


def assert_v2_ranks_as_v1_with_history(kafka, topics, users, items, rng) -> None:
    """Each user's v2 request without history ranks as its v1 request carrying `items[user]`,
    with S items from the table."""
    candidates = [{"post_id": p, "author_id": rng.randint(1, 300), "surface": rng.randrange(16)}
                  for p in rng.sample(range(1, 5000), 8)]
    messages = []
    for i, user in enumerate(users):
        messages += [request(wire.REQUEST_SCHEMA, f"v1-{i}", user, candidates,
                             wire_history(items[user])),
                     request(wire.REQUEST_SCHEMA_V2, f"v2-{i}", user, candidates)]
    results = rank_all(kafka, topics, messages)
    for i in range(len(users)):
        assert results[f"v2-{i}"]["history_items"] == S
        assert_same_ranking(results[f"v2-{i}"], results[f"v1-{i}"])


def wait_until(condition, timeout_s: float, what: str | Callable[[], str]) -> None:
    """Waits until `condition()`; `what` (or what it returns) says what was waited for."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.2)


def test_a_worker_that_gives_partitions_up_drops_their_users_from_memory(
        kafka, worker_factory):
    """The memory store keeps only the users of the partitions a worker owns: when a second
    worker joins, the first drops the users of the partitions it gave up and the second
    rebuilds them from the changelog; together they hold each user once."""
    rng = random.Random(21)
    group = WorkerGroup.create(kafka, worker_factory, rng, partitions=4)
    a = group.ready()
    users, items = users_with_engagements(rng, 40, 3)
    produce_engagements(kafka, group.topics, [e for u in users for e in items[u]])
    wait_until(lambda: a.metric("ranker_history_users") == 40, 30, "a holds every user")
    b = group.ready()

    def split() -> tuple[float, float]:
        return a.metric("ranker_history_users"), b.metric("ranker_history_users")

    # a keeps only its own partitions' users; b rebuilt the others from the changelog, to its
    # end on either broker (the worker checks the embedded broker's listed ends by a fetch).
    wait_until(lambda: 0 < split()[0] < 40 and split()[1] > 0 and sum(split()) == 40, 40,
               lambda: f"each user held once: (a, b) = {split()}")
    print(f"\nhistory memory: a alone held 40 users; after b joined a holds {split()[0]:.0f}, "
          f"b {split()[1]:.0f}")


@pytest.mark.kafka_contract
def test_a_restarted_worker_rebuilds_every_history_from_the_changelog(kafka, worker_factory):
    """SIGTERM, then a new worker in the group: nothing left to read on the engagement topic
    (all committed), so every history comes from the changelog alone."""
    rng = random.Random(31)
    group = WorkerGroup.create(kafka, worker_factory, rng)
    topics = group.topics
    first = group.ready()
    users, items = users_with_engagements(rng, 20, 36)
    produce_engagements(kafka, topics, [items[u][i] for i in range(36) for u in users])
    wait_for_metric(first, 'ranker_engagements_total{outcome="applied"}', 20 * 36)
    assert first.stop() == 0
    second = group.ready()
    wait_until(lambda: second.metric("ranker_history_users") == 20, 30,
               f"users rebuilt: {second.metric('ranker_history_users')}")
    assert second.metric("ranker_engagements_total") == 0  # nothing re-read: all from the log
    assert_v2_ranks_as_v1_with_history(kafka, topics, users, items, rng)
