"""The pipeline below Kafka: records in, encoded results and dead letters out."""

import time

import numpy as np
import pytest

from aiokafka.errors import MessageSizeTooLargeError

from phoenix import compilations
from phoenix.actions import ACTION_NAMES
from phoenix.config import ConfigError
from phoenix.runner import RankingRunner
from tests.phoenix_helpers import TINY
from worker import codec, wire
from worker.assembly import Assembler, Buckets, widths_for
from worker.pipeline import InputRecord, RankingPipeline, publish_failed
from worker.rollout import Canary, in_canary
from tools.producer import BAD_EVENT_KINDS, generate_events
from worker.validation import ValidationLimits, parse_request

BUCKETS = Buckets(batch_sizes=(1, 4, 16), widths=widths_for(8, 1024))


@pytest.fixture(scope="module")
def runner():
    return RankingRunner.create(seed=3, model_version="test-v1")


@pytest.fixture(scope="module")
def pipeline(runner):
    return RankingPipeline.create(runner, BUCKETS, worker_id="w-test")


def records_for(events, now=None):
    now = int(time.time() * 1000) if now is None else now
    return [InputRecord(e.encode(now), e.key, "ranking-requests", 0, i, now)
            for i, e in enumerate(events)]


def test_results_match_the_runner_called_directly(pipeline, runner):
    events = list(generate_events(seed=11, count=20))
    records = records_for(events)
    batch = pipeline.process(pipeline.decode(records))
    assert [o.request_id for o in batch.outcomes] == [e.request_id for e in events]
    assert all(o.is_result for o in batch.outcomes)
    limits = ValidationLimits.from_config(runner.config)
    assembler = Assembler(runner.config, Buckets(batch_sizes=(1,), widths=(8,)))
    for record, outcome in zip(records, batch.outcomes):
        result = codec.decode_message(outcome.value)
        request = parse_request(record.value, limits)
        # The reference layout (`rank`): the worker's cached path must agree with it.
        ranking, = assembler.rank([request], runner.rank)
        assert [c["post_id"] for c in result["ranked"]] == \
            request.candidate_post_ids[ranking.order].tolist()
        got = np.array([[c["probabilities"][a] for a in ACTION_NAMES] for c in result["ranked"]])
        np.testing.assert_allclose(got, ranking.probabilities[ranking.order], atol=1e-5)
        assert result["model_version"] == "test-v1" and result["worker_id"] == "w-test"
        assert outcome.key == codec.user_key(request.user_id)


def test_swap_runner_serves_the_new_model_from_the_next_batch(runner):
    pipeline = RankingPipeline.create(runner, BUCKETS, worker_id="w-swap")
    records = records_for(list(generate_events(seed=12, count=6)))

    def ranked(batch):
        results = [codec.decode_message(o.value) for o in batch.outcomes]
        return ({r["model_version"] for r in results},
                [[c["score"] for c in r["ranked"]] for r in results])

    before_versions, before = ranked(pipeline.process(pipeline.decode(records)))
    new = RankingRunner.create(seed=4, model_version="test-v2")
    assert pipeline.swap_runner(new) is runner
    after_versions, after = ranked(pipeline.process(pipeline.decode(records)))
    assert (before_versions, after_versions) == ({"test-v1"}, {"test-v2"})
    assert before != after


def test_a_canary_ranks_its_share_of_the_users_and_labels_their_results(runner):
    canary_runner = RankingRunner.create(seed=4, model_version="test-canary")
    pipeline = RankingPipeline.create(runner, BUCKETS, "w-canary",
                                      canary=Canary(canary_runner, 0.5))
    alone = {version: RankingPipeline.create(r, BUCKETS, "w-canary")
             for version, r in (("test-v1", runner), ("test-canary", canary_runner))}
    events = list(generate_events(seed=13, count=40))
    records = records_for(events)
    results = [codec.decode_message(o.value)
               for o in pipeline.process(pipeline.decode(records)).outcomes]
    in_share = in_canary(np.array([r["user_id"] for r in results], np.uint64), 0.5)
    versions = [r["model_version"] for r in results]
    assert versions == ["test-canary" if c else "test-v1" for c in in_share]
    assert 0 < in_share.sum() < len(results)  # both models served this batch
    for version, alone_pipeline in alone.items():  # each result is its model's own ranking
        own = [codec.decode_message(o.value)
               for o in alone_pipeline.process(alone_pipeline.decode(records)).outcomes]
        for mine, theirs in zip(results, own):
            if mine["model_version"] == version:
                assert [c["post_id"] for c in mine["ranked"]] == \
                    [c["post_id"] for c in theirs["ranked"]]
    assert [o.model_version for o in pipeline.process(pipeline.decode(records)).outcomes] \
        == versions  # the same users get the same model again


def test_a_canary_of_another_config_is_refused(runner):
    other = RankingRunner.create(TINY, seed=1)
    with pytest.raises(ConfigError, match="canary"):
        RankingPipeline.create(runner, BUCKETS, "w", canary=Canary(other, 0.5))


def test_every_bad_kind_is_dead_lettered_with_its_code(pipeline):
    events = list(generate_events(seed=5, count=4 * len(BAD_EVENT_KINDS), bad_fraction=0.5))
    records = records_for(events)
    outcomes = pipeline.process(pipeline.decode(records)).outcomes
    seen = set()
    for event, record, outcome in zip(events, records, outcomes):
        assert outcome.dead_letter_code == event.expected_code, event.kind
        if outcome.is_result:
            continue
        seen.add(event.kind)
        letter = codec.decode_message(outcome.value)
        # Untouched, up to the request byte cap (the too_large kind is just over it).
        kept = codec.original_keep_bytes(len(record.value), pipeline.limits.max_message_bytes)
        assert letter["original"] == record.value[:kept]
        assert letter["original_size"] == len(record.value)
        assert letter["source"] == {"topic": "ranking-requests", "partition": 0,
                                    "offset": record.offset}
        assert letter["error"]["code"] == event.expected_code and letter["error"]["message"]
    assert seen == set(BAD_EVENT_KINDS)


def test_max_age_expires_old_records(runner):
    pipeline = RankingPipeline.create(runner, BUCKETS, "w", max_age_ms=1000)
    events = list(generate_events(seed=1, count=2))
    old = int(time.time() * 1000) - 5000
    records = records_for(events, now=old)
    outcomes = pipeline.process(pipeline.decode(records)).outcomes
    assert [o.dead_letter_code for o in outcomes] == ["expired", "expired"]
    assert "max age of 1000 ms" in codec.decode_message(outcomes[0].value)["error"]["message"]


def test_top_k_cuts_the_ranking(pipeline):
    event = next(generate_events(seed=2, count=1))
    request = codec.decode_message(event.encode(1))
    request["top_k"] = 3
    record = InputRecord(codec.encode_request(request), None, "t", 0, 0)
    result = codec.decode_message(pipeline.process(pipeline.decode([record])).outcomes[0].value)
    assert len(result["ranked"]) == 3
    scores = [c["score"] for c in result["ranked"]]
    assert scores == sorted(scores, reverse=True)


class PoisonRunner(RankingRunner):
    """Raises whenever a batch contains the poisoned user's hash."""

    poison_user_hash: int = -1

    def rank_cached(self, batch):
        if (np.asarray(batch.user_hashes)[:, 0] == self.poison_user_hash).any():
            raise FloatingPointError("poisoned row")
        return super().rank_cached(batch)


def test_poison_request_is_isolated(runner):
    poison = PoisonRunner(runner.config, runner.params, runner.tables)
    pipeline = RankingPipeline.create(poison, BUCKETS, "w")
    events = list(generate_events(seed=8, count=9))
    records = records_for(events)
    culprit = parse_request(records[4].value, pipeline.limits)
    poison.poison_user_hash = int(pipeline.assembler.hasher.users(
        np.uint64(culprit.user_id))[0])
    outcomes = pipeline.process(pipeline.decode(records)).outcomes
    codes = [o.dead_letter_code for o in outcomes]
    assert codes == [None] * 4 + ["model_error"] + [None] * 4
    message = codec.decode_message(outcomes[4].value)["error"]["message"]
    assert "FloatingPointError" in message and "poisoned row" in message


def test_tiny_config_pipeline_smoke(tiny_runner):
    """The shrunken-config path (Flax style): tiny model, one batch, every stage runs."""
    pipeline = RankingPipeline.create(tiny_runner, Buckets(batch_sizes=(2,), widths=(4, 8, 16)),
                                      "w", max_history=64, max_candidates=16)
    events = list(generate_events(seed=3, count=2, source="random"))
    batch = pipeline.process(pipeline.decode(records_for(events)))
    assert all(o.is_result for o in batch.outcomes)
    assert batch.candidates == 16  # 8 candidates per request, each request one row


def test_warmup_calls_back_after_every_shape_of_every_model(tiny_runner):
    """Start-up checks for a stop there: one callback per compiled shape, canary included."""
    buckets = Buckets(batch_sizes=(1, 2), widths=(4, 8))
    pipeline = RankingPipeline.create(tiny_runner, buckets, "w", max_candidates=8,
                                      canary=Canary(tiny_runner, 0.5))
    calls = []
    pipeline.warmup(after_each=lambda: calls.append(len(calls)))
    assert len(buckets.shapes()) > 1 and len(calls) == 2 * len(buckets.shapes())


def test_unexpected_error_dead_letters_the_batch_instead_of_raising(runner, monkeypatch):
    pipeline = RankingPipeline.create(runner, BUCKETS, "w")
    events = list(generate_events(seed=12, count=3))

    def broken(*args, **kwargs):
        raise KeyError("bug in encoding")

    monkeypatch.setattr(pipeline, "_result", broken)
    outcomes = pipeline.process(pipeline.decode(records_for(events))).outcomes
    assert [o.dead_letter_code for o in outcomes] == ["model_error"] * 3
    message = codec.decode_message(outcomes[0].value)["error"]["message"]
    assert "KeyError" in message and "bug in encoding" in message


# ---------------------------------------------------------------- any record the broker accepts


def wire_request(request_id: str, num_candidates: int, user_id: int = 7) -> bytes:
    return codec.encode_request({
        "schema": wire.REQUEST_SCHEMA, "request_id": request_id, "user_id": user_id,
        "history": [{"post_id": 900 + i, "author_id": 5, "actions": ["favorite"], "surface": 0}
                    for i in range(3)],
        "candidates": [{"post_id": 1 + i, "author_id": 1 + i % 7, "surface": i % 3}
                       for i in range(num_candidates)]})


@pytest.mark.parametrize("size", [2 << 20, 20 << 20], ids=["2MB", "20MB"])
def test_an_oversized_record_gets_a_dead_letter_that_fits_and_its_neighbours_results(
        pipeline, size):
    big = b"\x85" + bytes(size - 1)  # starts like a msgpack map; far over the 1 MiB cap
    values = [wire_request("before", 3), big, wire_request("after", 3)]
    records = [InputRecord(v, None, "ranking-requests", 0, i) for i, v in enumerate(values)]
    outcomes = pipeline.process(pipeline.decode(records)).outcomes
    assert [o.dead_letter_code for o in outcomes] == [None, "too_large", None]
    letter = codec.decode_message(outcomes[1].value)
    assert letter["original"] == big[:codec.ORIGINAL_PREFIX_BYTES]
    assert letter["original_size"] == size and letter["original_truncated"] is True
    assert f"{size} bytes" in letter["error"]["message"]
    assert len(outcomes[1].value) <= pipeline.max_outcome_bytes


def test_a_result_over_the_publish_cap_becomes_a_too_large_dead_letter(runner):
    small = RankingPipeline.create(runner, BUCKETS, "w", max_message_bytes=64 << 10)
    request = wire_request("wide", 1000)  # ~30 KB in, ~0.5 MB of result out
    outcome, = small.process(small.decode([InputRecord(request, None, "t", 0, 0)])).outcomes
    assert outcome.dead_letter_code == "too_large"
    letter = codec.decode_message(outcome.value)
    assert letter["request_id"] == "wide" and letter["original"] == request
    assert "top_k" in letter["error"]["message"]
    assert len(outcome.value) <= small.max_outcome_bytes


def test_publish_failed_keeps_a_small_prefix_and_names_the_refusal(pipeline):
    record = InputRecord(bytes(range(256)) * 100, b"k", "ranking-requests", 2, 41)
    outcome, = pipeline.process(pipeline.decode([record])).outcomes
    stand_in = publish_failed(outcome, MessageSizeTooLargeError("broker said no"))
    letter = codec.decode_message(stand_in.value)
    assert stand_in.dead_letter_code == "publish_failed" and stand_in.record is record
    assert letter["original"] == record.value[:codec.MINIMAL_ORIGINAL_BYTES]
    assert letter["original_size"] == len(record.value)
    assert "not_msgpack dead letter" in letter["error"]["message"]
    assert "MessageSizeTooLargeError" in letter["error"]["message"]


@pytest.mark.slow
def test_distinct_candidate_counts_compile_nothing_after_warmup(tiny_runner):
    """Every count from 1 to the cap ranks without a compilation once warm-up is done (the
    live test in test_foreign_client.py does the same up to 1024 on the demo model)."""
    runner = tiny_runner
    buckets = Buckets(batch_sizes=(1, 4, 16),
                      widths=widths_for(TINY.candidate_seq_len, 200, small=(2,)))
    pipeline = RankingPipeline.create(runner, buckets, "w", max_candidates=200)
    pipeline.warmup()
    counts = [1, 2, 3, 4, 5, 8, 9, 17, 33, 64, 65, 99, 128, 129, 150, 199, 200]
    before = compilations.count()
    for n in counts:
        outcome, = pipeline.process(pipeline.decode([InputRecord(wire_request(f"n{n}", n), None, "t", 0, n)]
                                    )).outcomes
        assert outcome.is_result, codec.decode_message(outcome.value)
        assert len(codec.decode_message(outcome.value)["ranked"]) == n
    assert compilations.count() == before, compilations.last_function()


@pytest.mark.slow
def test_random_mixes_of_candidate_counts_compile_nothing_after_warmup(tiny_runner):
    """Batches mixing any counts up to the cap, in any number, stay on the warmed shapes;
    every request gets its own full ranking back in order."""
    buckets = Buckets(batch_sizes=(1, 4, 16), widths=widths_for(TINY.candidate_seq_len, 300),
                      call_candidates=16 * TINY.candidate_seq_len)
    pipeline = RankingPipeline.create(tiny_runner, buckets, "w", max_candidates=300)
    pipeline.warmup()
    rng = np.random.default_rng(17)
    before = compilations.count()
    for trial in range(12):
        counts = rng.choice([1, 3, 4, 5, 40, 130, 300], size=int(rng.integers(1, 40)))
        records = [InputRecord(wire_request(f"t{trial}-{i}", int(n), user_id=i + 1), None,
                               "t", 0, i) for i, n in enumerate(counts)]
        outcomes = pipeline.process(pipeline.decode(records)).outcomes
        results = [codec.decode_message(o.value) for o in outcomes]
        assert [r["request_id"] for r in results] == [f"t{trial}-{i}" for i in range(len(counts))]
        assert [len(r["ranked"]) for r in results] == counts.tolist()
    assert compilations.count() == before, compilations.last_function()


def test_buckets_over_the_cache_budget_stop_the_start_with_a_clear_error(tiny_runner):
    from phoenix.config import ConfigError
    wide = Buckets(batch_sizes=(1, 64), widths=widths_for(TINY.candidate_seq_len, 1024))
    with pytest.raises(ConfigError, match=r"largest model call \(64 requests x .* KiB of cached "
                                          r"context each .* over the context cache budget of "
                                          r"0.01 MiB; lower the largest batch bucket"):
        RankingPipeline.create(tiny_runner, wide, "w", cache_budget_mb=0.01)
    with pytest.raises(ConfigError, match=r"widest candidate bucket \(8\) is below the 1024"):
        RankingPipeline.create(tiny_runner, Buckets(widths=(4, 8)), "w")


def _deadline_record(event, timestamp_ms: int, deadline_ms: int) -> InputRecord:
    request = codec.decode_message(event.encode(timestamp_ms))
    request["timestamp_ms"], request["deadline_ms"] = timestamp_ms, deadline_ms
    return InputRecord(codec.encode_request(request), event.key, "ranking-requests", 0, 0,
                       timestamp_ms)


@pytest.mark.parametrize("sent_ago_ms, deadline_after_sent_ms, says, never", [
    (1000, -60_000, "already 60000 ms in the past when the request was sent",
     "add workers"),
    (60_000, 1000, "it waited", "already"),
], ids=["deadline_past_when_sent", "waited_in_the_queue"])
def test_expired_says_whether_the_deadline_was_past_on_sending_or_passed_in_the_queue(
        pipeline, sent_ago_ms, deadline_after_sent_ms, says, never):
    event = next(generate_events(seed=4, count=1))
    sent = int(time.time() * 1000) - sent_ago_ms
    record = _deadline_record(event, sent, sent + deadline_after_sent_ms)
    outcome, = pipeline.process(pipeline.decode([record])).outcomes
    assert outcome.dead_letter_code == "expired"
    message = codec.decode_message(outcome.value)["error"]["message"]
    assert says in message and never not in message
