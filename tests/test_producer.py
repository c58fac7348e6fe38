"""The mock producer's pure event generation and its file output (Kafka tests live elsewhere)."""

from __future__ import annotations

import collections
import time

import msgpack
import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from training.world import World, WorldConfig
from tools import producer
from worker.errors import EXPIRED, ValidationError
from tools.producer import BAD_EVENT_KINDS, VALID, generate_events, read_truth
from tools.recordfile import read_records
from worker.topics import REQUESTS_TOPIC
from worker.validation import parse_request

TS = 1_700_000_000_000
CONFIG = WorldConfig()


def _values(seed: int, count: int, **kwargs) -> list[bytes]:
    return [event.encode(TS) for event in generate_events(seed, count, **kwargs)]


def _unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False)


def _check_shape(request: dict, config: WorldConfig = CONFIG) -> None:
    """The wire contract's structure, checked independently of worker.validation."""
    assert set(request) <= {"schema", "request_id", "user_id", "history", "candidates",
                            "top_k", "timestamp_ms", "deadline_ms"}
    assert request["schema"] == "ranking-request.v1"
    assert isinstance(request["request_id"], str) and 1 <= len(request["request_id"]) <= 128
    assert type(request["user_id"]) is int and 1 <= request["user_id"] < 2**64
    assert config.history_len // 2 <= len(request["history"]) <= config.history_len
    for item in request["history"]:
        assert set(item) == {"post_id", "author_id", "actions", "surface"}
        assert type(item["post_id"]) is int and 1 <= item["post_id"] < 2**64
        assert type(item["author_id"]) is int and 1 <= item["author_id"] < 2**64
        assert type(item["surface"]) is int and 0 <= item["surface"] < config.num_surfaces
        assert set(item["actions"]) <= set(ACTION_NAMES)
        assert len(set(item["actions"])) == len(item["actions"])
    post_ids = [c["post_id"] for c in request["candidates"]]
    assert len(post_ids) == config.num_candidates == len(set(post_ids))
    for item in request["candidates"]:
        assert set(item) == {"post_id", "author_id", "surface"}
        assert type(item["post_id"]) is int and 1 <= item["post_id"] < 2**64
        assert type(item["author_id"]) is int and 1 <= item["author_id"] < 2**64
        assert type(item["surface"]) is int and 0 <= item["surface"] < config.num_surfaces


@pytest.mark.parametrize("source", ["world", "random"])
def test_same_seed_same_bytes(source):
    a = _values(7, 150, source=source, bad_fraction=0.2)
    b = _values(7, 150, source=source, bad_fraction=0.2)
    assert a == b
    assert _values(8, 150, source=source, bad_fraction=0.2) != a
    # Prefix-stable: asking for fewer events gives the same first events.
    assert _values(7, 37, source=source, bad_fraction=0.2) == a[:37]


@pytest.mark.parametrize("source", ["world", "random"])
def test_valid_events_follow_the_contract(source):
    events = list(generate_events(3, 200, source=source))
    assert all(event.kind == VALID for event in events)
    assert len({event.request_id for event in events}) == len(events)
    for event in events:
        value = event.encode(TS)
        request = _unpack(value)
        _check_shape(request)
        assert request["timestamp_ms"] == TS
        assert event.key == request["user_id"].to_bytes(8, "big")
        parsed = parse_request(value)  # and the worker's validator agrees
        assert parsed.request_id == request["request_id"]
        assert parsed.num_candidates == CONFIG.num_candidates
    assert "timestamp_ms" not in _unpack(events[0].encode(None))


def test_random_source_statistics():
    # create_example_batch style: about 30% of the actions set per history item.
    s = CONFIG.history_len
    requests = [_unpack(event.encode()) for event in generate_events(1, 400, source="random")]
    lengths = [len(r["history"]) for r in requests]
    assert min(lengths) >= s // 2 and max(lengths) <= s and len(set(lengths)) > 5
    items = [item for r in requests for item in r["history"]]
    rate = sum(len(item["actions"]) for item in items) / (len(items) * len(ACTION_NAMES))
    assert 0.28 < rate < 0.32
    assert len({r["user_id"] for r in requests}) == len(requests)


def test_world_source_carries_truth_of_its_candidates():
    world = World.create(CONFIG)
    for event in generate_events(4, 30, source="world"):
        request = _unpack(event.encode())
        truth = event.truth
        assert truth is not None and truth.request_id == request["request_id"]
        post_ids = [c["post_id"] for c in request["candidates"]]
        assert truth.candidate_post_ids.tolist() == post_ids
        expected = world.true_probabilities(request["user_id"],
                                            np.array(post_ids, dtype=np.uint64),
                                            [c["surface"] for c in request["candidates"]])
        np.testing.assert_allclose(truth.probabilities, expected)


@pytest.mark.parametrize("source", ["world", "random"])
def test_candidates_range_draws_every_count_and_keeps_truth_aligned(source):
    world = World.create(CONFIG)
    events = list(generate_events(6, 300, source=source, candidates=(1, 12)))
    counts = collections.Counter()
    for event in events:
        request = parse_request(event.encode(TS))  # valid under the worker's own rules
        counts[request.num_candidates] += 1
        if source == "world":
            post_ids = request.candidate_post_ids
            assert event.truth.candidate_post_ids.tolist() == post_ids.tolist()
            expected = world.true_probabilities(request.user_id, post_ids,
                                                request.candidate_surfaces)
            np.testing.assert_allclose(event.truth.probabilities, expected)
    assert sorted(counts) == list(range(1, 13))  # both ends and everything between


def test_the_contract_s_largest_candidate_set_comes_from_the_demo_world():
    event, = generate_events(2, 1, candidates=(1024, 1024))
    request = parse_request(event.encode(TS))
    assert request.num_candidates == 1024 and len(set(request.candidate_post_ids)) == 1024
    fixed = list(generate_events(3, 5, candidates=(7, 7), bad_fraction=0.4))
    assert all(len(_unpack(e.encode(TS))["candidates"]) == 7 for e in fixed if e.kind == VALID)


def test_bad_fraction_is_roughly_honoured_and_covers_every_kind():
    count, fraction = 2000, 0.2
    events = list(generate_events(5, count, source="random", bad_fraction=fraction,
                                  too_large_bytes=2000))
    kinds = collections.Counter(event.kind for event in events)
    bad = count - kinds[VALID]
    sd = (count * fraction * (1 - fraction)) ** 0.5
    assert abs(bad - count * fraction) < 5 * sd
    assert set(kinds) - {VALID} == set(BAD_EVENT_KINDS)
    assert all(event.truth is None for event in events if event.kind != VALID)
    assert not any(event.kind != VALID for event in generate_events(5, 300))


@pytest.mark.parametrize("kind", sorted(BAD_EVENT_KINDS))
@pytest.mark.parametrize("source", ["world", "random"])
def test_each_bad_kind_gets_its_dead_letter_code(kind, source):
    events = list(generate_events(9, 3, source=source, bad_fraction=1.0, bad_kinds=[kind]))
    assert [event.kind for event in events] == [kind] * 3
    for event in events:
        value = event.encode(TS)
        assert event.expected_code == BAD_EVENT_KINDS[kind]
        if BAD_EVENT_KINDS[kind] == EXPIRED:
            # Structurally valid; the worker refuses it at the deadline check.
            request = parse_request(value)
            assert request.deadline_ms is not None and request.deadline_ms < time.time() * 1000
            continue
        with pytest.raises(ValidationError) as error:
            parse_request(value)
        assert error.value.code == BAD_EVENT_KINDS[kind], str(error.value)
        assert len(event.key) == 8


def test_too_large_is_over_the_requested_size():
    event = next(generate_events(1, 1, bad_fraction=1.0, bad_kinds=["too_large"],
                                 too_large_bytes=50_000))
    value = event.encode(TS)
    assert len(value) > 50_000
    _check_shape({**_unpack(value), "history": []}, WorldConfig(history_len=1))


def test_generate_events_rejects_bad_arguments():
    with pytest.raises(producer.ProducerError, match="source must be one of"):
        list(generate_events(0, 1, source="nope"))
    with pytest.raises(producer.ProducerError, match=r"bad_fraction must be in \[0, 1\]"):
        list(generate_events(0, 1, bad_fraction=1.5))
    with pytest.raises(producer.ProducerError, match="unknown: \\['typo'\\]"):
        list(generate_events(0, 1, bad_fraction=0.5, bad_kinds=["typo"]))


def test_cli_out_writes_a_record_file(tmp_path):
    out, truth = tmp_path / "requests.rec", tmp_path / "truth.jsonl"
    common = ["--count", "120", "--seed", "12", "--bad-fraction", "0.1", "--fixed-timestamp-ms",
              str(TS), "--too-large-bytes", "5000", "--no-progress"]
    assert producer.main(common + ["--out", str(out), "--truth", str(truth)]) == 0
    records = list(read_records(out))
    events = list(generate_events(12, 120, bad_fraction=0.1, too_large_bytes=5000))
    assert [r.value for r in records] == [e.encode(TS) for e in events]
    assert [r.key for r in records] == [e.key for e in events]
    assert {r.topic for r in records} == {REQUESTS_TOPIC}
    assert {r.timestamp_ms for r in records} == {TS}
    assert all(r.partition is None and r.offset is None for r in records)

    truths = read_truth(truth)
    valid = [e for e in events if e.kind == VALID]
    assert 0 < len(valid) < len(events)
    assert list(truths) == [e.request_id for e in valid]  # only valid events, in order
    for event in valid:
        np.testing.assert_allclose(truths[event.request_id].probabilities,
                                   event.truth.probabilities, atol=1e-6)

    again = tmp_path / "again.rec"
    assert producer.main(common + ["--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # same seed, pinned clock: byte-identical


def test_cli_stamps_send_time_and_nothing_else_differs(tmp_path):
    paths = [tmp_path / "a.rec", tmp_path / "b.rec"]
    before = time.time_ns() // 1_000_000
    for path in paths:
        assert producer.main(["--count", "20", "--seed", "2", "--source", "random",
                              "--out", str(path), "--no-progress"]) == 0
    after = time.time_ns() // 1_000_000
    decoded = []
    for path in paths:
        records = list(read_records(path))
        maps = [_unpack(r.value) for r in records]
        assert all(before <= m["timestamp_ms"] <= after for m in maps)
        assert [m["timestamp_ms"] for m in maps] == [r.timestamp_ms for r in records]
        decoded.append([{k: v for k, v in m.items() if k != "timestamp_ms"} for m in maps])
    assert decoded[0] == decoded[1]


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--source", "random", "--truth", "t.jsonl"], "--truth needs --source world",
                 id="truth-random"),
    pytest.param(["--bad-fraction", "2"], "--bad-fraction must be in [0, 1]", id="fraction"),
    pytest.param(["--rate", "-1"], "--rate must be", id="rate"),
    pytest.param(["--count", "-5"], "--count must be >= 0", id="count"),
    pytest.param(["--candidates", "1025"], "1 <= MIN <= MAX <= 1024, got '1025'",
                 id="candidates-over-the-contract"),
    pytest.param(["--candidates", "9:3"], "got '9:3'", id="candidates-reversed"),
    pytest.param(["--candidates", "lots"], "candidates must be N or MIN:MAX, got 'lots'",
                 id="candidates-not-a-number"),
])
def test_cli_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        producer.main(argv + ["--out", "unused.rec", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_cli_misspelt_worker_variable_is_one_line_exit_2(monkeypatch, capsys):
    """The producer reads the worker's security settings from RANKER_* variables."""
    monkeypatch.setenv("RANKER_SECURITY_PROTOCL", "SSL")
    assert producer.main(["--count", "1", "--bootstrap", "127.0.0.1:1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "RANKER_SECURITY_PROTOCL is not a setting; did you mean RANKER_SECURITY_PROTOCOL" in err


def test_a_relative_deadline_is_due_that_long_after_the_send_time(tmp_path):
    import dataclasses

    from tools.producer import with_server_history

    events = list(generate_events(11, 40, bad_fraction=0.3, deadline_after_ms=100))
    valid = [e for e in events if e.kind == VALID]
    assert valid and len(valid) < len(events)
    for event in valid:
        request = parse_request(event.encode(TS))  # the worker reads it as its deadline
        assert request.deadline_ms == TS + 100
        assert "deadline_ms" not in _unpack(event.encode(None))  # no send time, no deadline
    # Malformed events keep what their kind gives them; engagements never carry one.
    assert all(e.deadline_after_ms is None for e in events if e.kind != VALID)
    engagements = [e for e in with_server_history(valid[:2]) if e.engagement]
    assert engagements and all("deadline_ms" not in _unpack(e.encode(TS)) for e in engagements)
    # The requests are otherwise those drawn without a deadline.
    assert [dataclasses.replace(e, deadline_after_ms=None).encode(TS) for e in events] == [
        e.encode(TS) for e in generate_events(11, 40, bad_fraction=0.3)]
    with pytest.raises(producer.ProducerError, match="deadline_after_ms must be >= 0"):
        list(generate_events(0, 1, deadline_after_ms=-1))

    out = tmp_path / "due.rec"
    assert producer.main(["--count", "5", "--seed", "3", "--fixed-timestamp-ms", str(TS),
                          "--deadline-ms", "250", "--out", str(out), "--no-progress"]) == 0
    assert [_unpack(r.value)["deadline_ms"] for r in read_records(out)] == [TS + 250] * 5
    with pytest.raises(SystemExit):
        producer.main(["--deadline-ms", "-5", "--out", str(out), "--no-progress"])
