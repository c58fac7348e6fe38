"""The history value (worker/history.py): order, cap, late and duplicate engagements, size,
and a request built from it equal to one carrying the same history."""

from __future__ import annotations

import random

import numpy as np
import pytest

from phoenix.actions import ACTION_INDEX, ACTION_NAMES
from worker import codec, history
from worker.engagement import Engagement, parse_engagement
from worker.errors import ValidationError
from worker.validation import ValidationLimits, parse_request
from worker.wire import ENGAGEMENT_SCHEMA, REQUEST_SCHEMA, REQUEST_SCHEMAS, REQUEST_SCHEMA_V2

LIMITS = ValidationLimits()


def engagement(post: int, t: int, user: int = 7, actions: tuple[str, ...] = ("click",),
               author: int = 50, surface: int = 1) -> Engagement:
    mask = sum(1 << ACTION_INDEX[a] for a in actions)
    return Engagement(user, post, author + post, mask, surface, t)


def build(events, cap: int) -> bytes | None:
    value = None
    for event in events:
        value = history.add(value, event, cap) or value
    return value


def posts(value: bytes | None) -> list[int]:
    return history.items(value)["post_id"].tolist()


def test_record_is_packed_and_small():
    assert history.RECORD_BYTES == 30  # 8 + 8 + 8 + 4 + 2, no padding
    full = build([engagement(post, t=post) for post in range(200)], cap=128)
    assert len(full) == 128 * 30  # a full history is its records and nothing else


def test_table_lookup_reads_nothing_until_a_table_is_attached():
    table: history.HistoryTable = {}
    history.apply(table, engagement(1, 100), cap=8)
    read = history.TableLookup()  # the worker's: built with the pipeline, before the table
    assert read(7) is None
    read.attach(history.lookup(table))
    assert posts(read(7)) == [1] and read(8) is None


def test_items_are_kept_in_event_time_order_most_recent_last():
    value = build([engagement(1, 100), engagement(2, 300), engagement(3, 200)], cap=8)
    assert posts(value) == [1, 3, 2]  # the late one (t=200) inserted at its place
    assert history.items(value)["timestamp_ms"].tolist() == [100, 200, 300]


def test_equal_times_keep_arrival_order():
    assert posts(build([engagement(1, 100), engagement(2, 100), engagement(3, 100)], 8)) == [
        1, 2, 3]


def test_cap_keeps_the_most_recent_and_drops_what_is_older_than_all_kept():
    value = build([engagement(p, 100 * p) for p in range(1, 11)], cap=4)
    assert posts(value) == [7, 8, 9, 10]
    assert history.add(value, engagement(99, 50), cap=4) is None  # older than all, full
    late = history.add(value, engagement(98, 850), cap=4)  # late, but newer than the oldest
    assert posts(late) == [8, 98, 9, 10]


def test_a_duplicate_changes_nothing_so_redelivery_is_idempotent():
    events = [engagement(p, 1000 - 7 * p) for p in range(20)]
    once = build(events, cap=8)
    assert history.add(once, events[-1], cap=8) is None
    assert build(events + events[::-1] + events, cap=8) == once
    # The same post at another time is a new engagement (seen again later).
    assert posts(history.add(once, engagement(19, 5000), cap=8))[-1] == 19


def test_any_delivery_order_gives_the_same_history():
    rng = random.Random(3)
    events = [engagement(p, rng.randrange(10**6)) for p in range(1, 200)]
    expected = build(sorted(events, key=lambda e: e.timestamp_ms), cap=32)
    for _ in range(5):
        shuffled = events + rng.sample(events, 50)  # with re-deliveries
        rng.shuffle(shuffled)
        got = history.items(build(shuffled, cap=32))
        assert got["timestamp_ms"].tolist() == history.items(expected)["timestamp_ms"].tolist()
        assert sorted(got["post_id"].tolist()) == sorted(posts(expected))


def test_every_field_survives_the_round_trip():
    e = Engagement(2**64 - 1, 2**64 - 2, 2**63 + 5, (1 << 19) - 1, 15, 2**62)
    # The append path packs bytes itself: exactly the RECORD the array path writes.
    assert history.add(None, e, cap=4) == history.record_of(e).tobytes()
    (item,) = history.items(history.add(None, e, cap=4))
    assert (int(item["post_id"]), int(item["author_id"]), int(item["actions"]),
            int(item["surface"]), int(item["timestamp_ms"])) == (
        e.post_id, e.author_id, e.actions, e.surface, e.timestamp_ms)


def _wire_engagement(user: int, post: int, t: int, rng: random.Random) -> dict:
    return {"schema": ENGAGEMENT_SCHEMA, "user_id": user, "post_id": post,
            "author_id": rng.randint(1, 2**64 - 1),
            "actions": rng.sample(ACTION_NAMES, rng.randint(0, 5)),
            "surface": rng.randrange(16), "timestamp_ms": t}


@pytest.mark.parametrize("n", [0, 3, 32, 45])
def test_table_history_request_equals_the_request_carrying_it(n):
    """A v2 request filled from the table holds exactly the arrays of the same request with
    that history on the wire (the S most recent, oldest first)."""
    rng = random.Random(n)
    sent = [_wire_engagement(9, 100 + i, 10_000 + i, rng) for i in range(n)]
    value = None
    for item in sent:
        value = history.add(value, parse_engagement(codec.encode_request(item), LIMITS), 64)
    base = {"request_id": "r", "user_id": 9,
            "candidates": [{"post_id": 5, "author_id": 6, "surface": 0}]}
    explicit = parse_request(codec.encode_request({
        "schema": REQUEST_SCHEMA, **base,
        "history": [{k: item[k] for k in ("post_id", "author_id", "actions", "surface")}
                    for item in sent]}), LIMITS)
    bare = parse_request(codec.encode_request({"schema": REQUEST_SCHEMA_V2, **base}),
                         LIMITS, REQUEST_SCHEMAS)
    filled = history.with_table_history(bare, value, LIMITS.history_keep)
    assert filled.history_source == "table" and filled.version == 2
    assert filled.num_history == min(n, LIMITS.history_keep)
    for name in ("history_post_ids", "history_author_ids", "history_actions",
                 "history_surfaces"):
        a, b = getattr(filled, name), getattr(explicit, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name


def test_engagement_errors_use_the_request_codes_and_paths():
    good = _wire_engagement(1, 2, 3, random.Random(0))
    cases = [({**good, "user_id": 0}, "invalid", "user_id"),
             ({**good, "actions": ["click", "click"]}, "invalid", "actions[1]"),
             ({**good, "actions": ["clik"]}, "invalid", "actions[0]"),
             ({**good, "surface": 16}, "invalid", "surface"),
             ({**good, "timestamp_ms": 1.0}, "invalid", "timestamp_ms"),
             ({**good, "postid": 1}, "invalid", "postid"),
             ({k: v for k, v in good.items() if k != "timestamp_ms"}, "invalid", "timestamp_ms"),
             ({**good, "schema": REQUEST_SCHEMA}, "invalid", "schema")]
    for message, code, field in cases:
        with pytest.raises(ValidationError) as info:
            parse_engagement(codec.encode_request(message), LIMITS)
        assert (info.value.code, info.value.field) == (code, field), message
    with pytest.raises(ValidationError, match="timestamp_ms is required") as info:
        parse_engagement(codec.encode_request(cases[6][0]), LIMITS)
    for data, code in ((b"\xc1", "not_msgpack"), (None, "not_msgpack"),
                       (codec.encode_request({**good, "pad": "x" * 5000}), "too_large")):
        with pytest.raises(ValidationError) as info:
            parse_engagement(data, LIMITS)
        assert info.value.code == code
