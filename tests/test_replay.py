"""Replay: offline ranking and compare through the worker's pipeline, record/publish on Kafka."""

import collections
import itertools
import math
import os
import re
import time

import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from phoenix.runner import RankingRunner
from tests.librdkafka_helpers import CODECS, librdkafka_producer, produce
from tests.phoenix_helpers import TINY
from tools.pacing import Pace, PaceError
from tools.replay.__main__ import main
from tools.replay.compare import Comparison, ScoreChange, run_compare
from tools.replay.files import chunked, iter_outcome_batches, replay_pipeline, to_inputs
from tools.replay.offline import summarize
from tools.replay.stats import kendall_tau, top_k_overlap
from worker import codec, wire
from worker.assembly import Buckets, widths_for
from worker.pipeline import RankingPipeline
from tools.producer import generate_events, write_events_to_file
from tools.recordfile import Record, read_records, write_records
from worker.settings import Settings
from worker.topics import DEAD_LETTER_TOPIC, REQUESTS_TOPIC, RESULTS_TOPIC

BUCKET_FLAGS = ["--batch-buckets", "1,4,16"]
BUCKETS = Buckets(batch_sizes=(1, 4, 16), widths=widths_for(TINY.candidate_seq_len, 1024))
STAMP_MS = 1_700_000_000_000


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny models with different random weights, saved as checkpoints."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed in (("a", 3), ("b", 4)):
        paths[name] = str(root / f"{name}.npz")
        RankingRunner.create(TINY, seed=seed, model_version=f"tiny-{name}").save(paths[name])
    return paths


@pytest.fixture(scope="module")
def events():
    # 30 of 60 malformed: with 25 kinds cycled, every dead-letter code appears.
    return list(generate_events(seed=7, count=60, bad_fraction=0.5))


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory, events):
    path = str(tmp_path_factory.mktemp("rec") / "requests.rec")
    write_events_to_file(events, path, fixed_timestamp_ms=STAMP_MS)
    return path


def run_cli(capsys, *argv):
    code = main(list(argv), environ={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def settings(*flags):
    return Settings.load([*BUCKET_FLAGS, *flags], environ={})


# ----------------------------------------------------------------------------- offline


def test_offline_writes_one_outcome_per_request_like_the_pipeline(
        capsys, tmp_path, requests_file, events, checkpoints):
    out = str(tmp_path / "results.rec")
    code, stdout, stderr = run_cli(capsys, "offline", requests_file, "--out", out,
                                   "--checkpoint", checkpoints["a"], "--batch-size", "7",
                                   "--no-progress", *BUCKET_FLAGS)
    assert code == 0, stderr
    written = list(read_records(out))
    assert len(written) == len(events)

    # The same records through the pipeline directly, in one batch (the CLI used chunks of 7).
    runner = RankingRunner.from_checkpoint(checkpoints["a"])
    pipeline = RankingPipeline.create(runner, BUCKETS, "direct")
    direct = pipeline.process(pipeline.decode(
        list(to_inputs(read_records(requests_file), REQUESTS_TOPIC)))).outcomes

    for event, record, expected in zip(events, written, direct):
        assert expected.dead_letter_code == event.expected_code, event.kind  # oracle sanity
        message = codec.decode_message(record.value)
        if event.expected_code is None:
            assert record.topic == RESULTS_TOPIC and record.key == event.key
            want = codec.decode_message(expected.value)
            assert message["request_id"] == event.request_id
            assert message["worker_id"] == "replay" and message["model_version"] == "tiny-a"
            assert [c["post_id"] for c in message["ranked"]] == \
                [c["post_id"] for c in want["ranked"]]
            got = np.array([[c["probabilities"][a] for a in ACTION_NAMES]
                            for c in message["ranked"]])
            ref = np.array([[c["probabilities"][a] for a in ACTION_NAMES]
                            for c in want["ranked"]])
            np.testing.assert_allclose(got, ref, atol=1e-5)
            np.testing.assert_allclose([c["score"] for c in message["ranked"]],
                                       [c["score"] for c in want["ranked"]], atol=1e-5)
        else:
            assert record.topic == DEAD_LETTER_TOPIC
            assert message["schema"] == wire.DEAD_LETTER_SCHEMA
            assert message["error"]["code"] == event.expected_code, event.kind
            original = event.encode(STAMP_MS)  # whole up to the byte cap, else a prefix
            assert message["original_size"] == len(original)
            assert message["original"] == original[:len(message["original"])]

    # The summary counts what the events say should happen, not what the outcomes said.
    expected_codes = collections.Counter(e.expected_code for e in events)
    valid = expected_codes.pop(None)
    assert re.search(rf"^requests\s+{len(events)}$", stdout, re.M)
    assert re.search(rf"^results\s+{valid}$", stdout, re.M)
    letters = ", ".join(f"{c} {n}" for c, n in sorted(expected_codes.items()))
    assert f"dead letters  {sum(expected_codes.values())} ({letters})" in stdout
    assert re.search(r"^requests/s\s+\d+\.\d", stdout, re.M)
    assert re.search(r"^model\s+tiny-a$", stdout, re.M)
    assert len(expected_codes) == 4  # not_msgpack, too_large, invalid, expired all covered


def test_outcome_batches_give_one_outcome_per_record_in_order(checkpoints, requests_file,
                                                              events):
    pipeline = replay_pipeline(settings(), checkpoints["a"])
    batches = list(iter_outcome_batches(read_records(requests_file), pipeline, batch_size=16))
    assert [len(b) for b in batches] == [16, 16, 16, 12]
    outcomes = [outcome for batch in batches for outcome in batch]
    assert [o.dead_letter_code for o in outcomes] == [e.expected_code for e in events]
    assert [o.record.offset for o in outcomes] == list(range(len(events)))  # index as offset
    assert all(o.record.partition == 0 for o in outcomes)


def test_summarize_counts_results_and_dead_letters_by_code():
    summary = summarize([None, "invalid", None, "expired", "invalid"], seconds=2.0,
                        model_version="v1", compilations=3)
    assert (summary.requests, summary.results) == (5, 2)
    assert summary.dead_letters == {"invalid": 2, "expired": 1}
    assert summary.requests_per_s == 2.5


def test_summarize_counts_results_by_model_version():
    summary = summarize([None, None, "invalid", None], 1.0, "v1",
                        versions=["v1", "canary", None, "v1"])
    assert summary.by_version == {"v1": 2, "canary": 1}
    assert "(results by model: canary 1, v1 2)" in summary.lines()[-1]
    assert "results by model" not in summarize([None], 1.0, "v1",
                                               versions=["v1"]).lines()[-1]


@pytest.mark.parametrize("size, want", [(1, [1] * 5), (2, [2, 2, 1]), (5, [5]), (9, [5])],
                         ids=["one", "uneven", "exact", "larger"])
def test_chunked_sizes(size, want):
    assert [len(c) for c in chunked(range(5), size)] == want


# ----------------------------------------------------------------------------- bad files


def test_truncated_file_exits_2_naming_the_file(capsys, tmp_path, requests_file, checkpoints):
    cut = tmp_path / "cut.rec"
    data = open(requests_file, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "results.rec"
    code, stdout, stderr = run_cli(capsys, "offline", str(cut), "--out", str(out),
                                   "--checkpoint", checkpoints["a"], "--no-progress",
                                   *BUCKET_FLAGS)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert str(cut) in stderr and "ends inside this record" in stderr
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_foreign_file_exits_2_naming_the_file(capsys, tmp_path, checkpoints):
    foreign = tmp_path / "requests.json"
    foreign.write_text('{"not": "a record file"}\n')
    code, _, stderr = run_cli(capsys, "compare", str(foreign), "--checkpoint", checkpoints["a"],
                              "--checkpoint", checkpoints["b"], "--no-progress", *BUCKET_FLAGS)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert str(foreign) in stderr and "is not a record file" in stderr


def test_compare_needs_two_checkpoints(capsys, requests_file, checkpoints):
    code, _, stderr = run_cli(capsys, "compare", requests_file, "--checkpoint",
                              checkpoints["a"], "--no-progress")
    assert code == 2 and "exactly twice" in stderr


# ----------------------------------------------------------------------------- compare


def test_kendall_tau_and_overlap_by_hand():
    order = np.array([10, 20, 30, 40], np.uint64)
    assert kendall_tau(order, order) == 1.0
    assert kendall_tau(order, order[::-1]) == -1.0
    # One adjacent swap: 5 of 6 pairs concordant, 1 discordant -> (5 - 1) / 6.
    assert kendall_tau(order, np.array([20, 10, 30, 40], np.uint64)) == pytest.approx(4 / 6)
    # Only common ids count: 10, 30 in the same order in both.
    assert kendall_tau(order, np.array([99, 10, 30], np.uint64)) == 1.0
    assert np.isnan(kendall_tau(order, np.array([10], np.uint64)))
    assert top_k_overlap(order, np.array([40, 30, 20, 10], np.uint64), 2) == 0.0
    assert top_k_overlap(order, np.array([20, 99, 10], np.uint64), 2) == 0.5


def tau_by_pairs(order_a: np.ndarray, order_b: np.ndarray) -> float:
    """Kendall's tau-a by its definition: each pair of ids both orders hold is concordant
    (same order in B as in A) or discordant; (concordant - discordant) / pairs."""
    rank_b = {int(p): i for i, p in enumerate(order_b)}
    common = [int(p) for p in order_a if int(p) in rank_b]
    pairs = list(itertools.combinations(common, 2))  # (earlier, later) in A's order
    if not pairs:
        return math.nan
    concordant = sum(rank_b[first] < rank_b[second] for first, second in pairs)
    return (concordant - (len(pairs) - concordant)) / len(pairs)


@pytest.mark.parametrize("common, only_one", [(2, 0), (3, 0), (8, 0), (50, 0), (8, 3),
                                              (50, 20)],
                         ids=["2", "3", "8", "50", "8+3-each", "50+20-each"])
def test_kendall_tau_counts_concordant_and_discordant_pairs(common, only_one):
    rng = np.random.default_rng(common * 100 + only_one)
    ids = rng.permutation(1000)[:common + 2 * only_one].astype(np.uint64) + 1
    shared, only_a, only_b = np.split(ids, [common, common + only_one])
    order_a = rng.permutation(np.concatenate([shared, only_a]))
    order_b = rng.permutation(np.concatenate([shared, only_b]))
    assert kendall_tau(order_a, order_b) == pytest.approx(tau_by_pairs(order_a, order_b))


def test_compare_with_itself_agrees_fully(checkpoints, requests_file, events):
    s = settings()
    comparison = run_compare(
        requests_file, replay_pipeline(s, checkpoints["a"]),
        replay_pipeline(s, checkpoints["a"]), batch_size=16, progress=False)
    valid = sum(e.expected_code is None for e in events)
    assert len(comparison.agreements) == valid
    assert all(a.overlap == 1.0 and a.tau == 1.0 for a in comparison.agreements)
    summary = comparison.summary()
    assert summary.mean_overlap == summary.mean_tau == 1.0
    assert sum(summary.skipped.values()) == len(events) - valid
    assert all(c.delta == 0.0 for c in comparison.largest_changes())


def test_compare_with_another_model_disagrees_and_reports_changes(
        capsys, checkpoints, requests_file, events):
    code, stdout, stderr = run_cli(capsys, "compare", requests_file, "--checkpoint",
                                   checkpoints["a"], "--checkpoint", checkpoints["b"],
                                   "--top", "3", "--no-progress", *BUCKET_FLAGS)
    assert code == 0, stderr
    valid_ids = [e.request_id for e in events if e.expected_code is None]
    rows = re.findall(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+(-?[\d.]+|n/a)$", stdout, re.M)
    assert [r[0] for r in rows] == valid_ids
    overlaps = [float(r[2]) for r in rows]
    taus = [float(r[3]) for r in rows if r[3] != "n/a"]
    assert np.mean(overlaps) < 1.0 and np.mean(taus) < 1.0
    mean_overlap = float(re.search(r"top-5 overlap mean ([\d.]+)", stdout).group(1))
    assert mean_overlap == pytest.approx(np.mean(overlaps), abs=1e-3)
    changes = re.findall(r"^  (\S+)  (\d+)  (-?[\d.]+) -> (-?[\d.]+) \(([+-][\d.]+)\)$",
                         stdout, re.M)
    assert len(changes) == 3
    deltas = [abs(float(c[4])) for c in changes]
    assert deltas == sorted(deltas, reverse=True) and deltas[0] > 0
    assert all(c[0] in valid_ids for c in changes)


def test_comparison_keeps_the_largest_changes():
    comparison = Comparison(k=5, top=2)
    for i, delta in enumerate([0.1, -3.0, 2.0, 0.5]):
        comparison._keep(ScoreChange("r", i, 1.0, 1.0 + delta))
    assert [c.post_id for c in comparison.largest_changes()] == [1, 2]


# ----------------------------------------------------------------------------- pacing


def test_pace_by_rate_and_recorded_gaps():
    records = [Record(b"x", timestamp_ms=t) for t in (1000, 1500, 1400, 4000)]
    by_rate = Pace(rate=4.0)
    assert [by_rate.due_s(r.timestamp_ms) for r in records] == [0.0, 0.25, 0.5, 0.75]
    recorded = Pace(recorded=True)
    # An earlier timestamp (partitions interleaved) is due at once: the sender never reorders.
    assert [recorded.due_s(r.timestamp_ms) for r in records] == [0.0, 0.5, 0.4, 3.0]
    assert [Pace().due_s(r.timestamp_ms) for r in records] == [0.0] * 4
    with pytest.raises(PaceError, match="not both"):
        Pace(rate=1.0, recorded=True)
    with pytest.raises(PaceError, match="finite number >= 0"):
        Pace(rate=-1.0)


# ----------------------------------------------------------------------------- Kafka


def by_partition(records):
    """{partition: [(key, value), ...]} in the order given."""
    out = collections.defaultdict(list)
    for r in records:
        out[r.partition].append((r.key, r.value))
    return dict(out)


@pytest.mark.kafka
def test_publish_then_record_round_trips_keys_values_and_order(capsys, kafka, tmp_path, events):
    topic = kafka.new_topic(partitions=3)
    source = [Record(value=e.encode(STAMP_MS + i), key=e.key, timestamp_ms=STAMP_MS + i,
                     topic=REQUESTS_TOPIC) for i, e in enumerate(events)]
    source.append(Record(value=b"keyless", key=None, timestamp_ms=STAMP_MS, topic="x"))
    path, copy = str(tmp_path / "in.rec"), str(tmp_path / "copy.rec")
    write_records(path, source)

    code, stdout, stderr = run_cli(capsys, "publish", path, "--topic", topic, "--bootstrap",
                                   kafka.bootstrap, "--rate", "1000", "--no-progress")
    assert code == 0, stderr
    assert f"published {len(source)} messages" in stdout

    # What the broker holds, read by the fixture's own consumer.
    on_broker = kafka.read_all(topic, settle_s=0.5)
    assert len(on_broker) == len(source)
    partitions = by_partition(on_broker)
    assert len(partitions) > 1  # keys spread over partitions: the order check means something
    for part, sent in partitions.items():
        sent_set = set(sent)
        assert sent == [(r.key, r.value) for r in source if (r.key, r.value) in sent_set], part
    keyed = [r for r in on_broker if r.key is not None]
    assert all(len({r.partition for r in keyed if r.key == k}) == 1 for k in {r.key for r in keyed})

    code, stdout, stderr = run_cli(capsys, "record", topic, copy, "--bootstrap",
                                   kafka.bootstrap, "--timeout-s", "1", "--no-progress")
    assert code == 0, stderr
    recorded = list(read_records(copy))
    assert by_partition(recorded) == partitions
    assert sorted((r.partition, r.offset, r.timestamp_ms) for r in recorded) == \
        sorted((r.partition, r.offset, r.timestamp) for r in on_broker)
    assert {r.topic for r in recorded} == {topic}

    # --count stops early, with exactly that many records.
    code, _, stderr = run_cli(capsys, "record", topic, copy, "--bootstrap", kafka.bootstrap,
                              "--count", "5", "--no-progress")
    assert code == 0, stderr
    assert len(list(read_records(copy))) == 5


def test_record_reads_batches_in_every_kafka_codec(capsys, kafka, tmp_path):
    """A topic written by librdkafka with gzip, snappy, lz4 and zstd batches records whole."""
    topic = kafka.new_topic(partitions=1)
    sent = []
    for codec_name in CODECS:
        batch = [(f"k-{codec_name}".encode(), f"{codec_name}-{i}".encode() * 50)
                 for i in range(5)]
        produce(librdkafka_producer(kafka.bootstrap, codec_name), topic, batch)
        sent += batch
    copy = str(tmp_path / "copy.rec")
    code, _, stderr = run_cli(capsys, "record", topic, copy, "--bootstrap", kafka.bootstrap,
                              "--timeout-s", "1", "--no-progress")
    assert code == 0, stderr
    assert [(r.key, r.value) for r in read_records(copy)] == sent


@pytest.mark.kafka
def test_missing_topic_is_refused_and_not_created(capsys, kafka, tmp_path, requests_file):
    missing = f"missing-{time.time_ns()}"
    for argv in (["publish", requests_file, "--topic", missing],
                 ["record", missing, str(tmp_path / "out.rec")]):
        code, _, stderr = run_cli(capsys, *argv, "--bootstrap", kafka.bootstrap,
                                  "--no-progress")
        assert code == 2
        assert f"topic {missing!r} does not exist" in stderr
    assert kafka.broker.partition_counts([missing]) == {}
