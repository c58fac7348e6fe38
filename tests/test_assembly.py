import msgspec
import numpy as np
import pytest

from phoenix import compilations
from phoenix.actions import NUM_ACTIONS, action_masks, multi_hot
from phoenix.config import ConfigError
from phoenix.hashing import Hasher
from tests.phoenix_helpers import TINY
from tests.request_helpers import make_request
from worker.assembly import MIB, Assembler, Buckets, widths_for
from phoenix.model import context_cache_bytes

# TINY has C=4, S=6. A call holds at most 32 candidate slots: 8 requests of 4, 2 of 16.
BUCKETS = Buckets(batch_sizes=(1, 2, 4, 8), widths=(2, 4, 8, 16, 32), call_candidates=32)


@pytest.fixture(scope="module")
def runner(tiny_runner):
    return tiny_runner  # any model: these tests check where values land, not what they are


def rank(runner, assembler, requests):
    return assembler.rank(requests, runner.rank_cached)


def test_batch_and_candidate_counts_round_up_to_buckets():
    assembler = Assembler(TINY, BUCKETS)
    requests = [make_request(i, 3, 1) for i in range(3)]
    call, = assembler.assemble(requests).calls
    assert call.num_rows == 3
    assert call.batch.user_hashes.shape == (4, TINY.hashes.num_user_hashes)
    assert call.batch.candidate_post_hashes.shape == (4, 2, TINY.hashes.num_item_hashes)
    assert call.batch.history_actions.shape == (4, TINY.history_seq_len, TINY.num_actions)
    assert (call.batch.user_hashes[3] == 0).all()  # the padding row is empty


def test_values_land_in_their_slots():
    assembler = Assembler(TINY, BUCKETS)
    hasher = Hasher(TINY.hashes)
    request = make_request(0, num_history=9, num_candidates=3)  # history longer than S=6
    batch = assembler.assemble([request]).calls[0].batch
    np.testing.assert_array_equal(batch.user_hashes[0], hasher.users(np.uint64(request.user_id)))
    # The most recent S items, oldest first, left-aligned.
    np.testing.assert_array_equal(batch.history_post_hashes[0],
                                  hasher.posts(request.history_post_ids[-6:]))
    # Mask bit i is action column i.
    bits = [[(int(mask) >> i) & 1 for i in range(TINY.num_actions)]
            for mask in request.history_actions[-6:]]
    np.testing.assert_array_equal(batch.history_actions[0], np.array(bits, np.float32))
    np.testing.assert_array_equal(batch.candidate_post_hashes[0, :3],
                                  hasher.posts(request.candidate_post_ids))
    np.testing.assert_array_equal(batch.candidate_product_surface[0, :3],
                                  request.candidate_surfaces)
    assert (batch.candidate_post_hashes[0, 3:] == 0).all()


def test_short_history_is_padded():
    batch = Assembler(TINY, BUCKETS).assemble([make_request(1, 2, 2)]).calls[0].batch
    assert (batch.history_post_hashes[0, :2] != 0).all()
    assert (batch.history_post_hashes[0, 2:] == 0).all()
    assert (batch.history_actions[0, 2:] == 0).all()


@pytest.mark.slow
def test_compilations_bounded_by_bucket_shapes(runner):
    assembler = Assembler(TINY, BUCKETS)
    before = compilations.count()
    rng = np.random.default_rng(0)
    for trial in range(25):
        n = int(rng.integers(1, 12))
        requests = [make_request(100 * trial + i, int(rng.integers(0, 8)),
                                 int(rng.integers(1, 10))) for i in range(n)]
        rank(runner, assembler, requests)
    assert compilations.count() - before <= len(BUCKETS.shapes()), compilations.last_function()


def test_large_batches_are_split_into_calls():
    assembler = Assembler(TINY, BUCKETS)
    assembly = assembler.assemble([make_request(i, 2, 2) for i in range(19)])
    assert [c.num_rows for c in assembly.calls] == [8, 8, 3]
    assert [c.batch.user_hashes.shape[0] for c in assembly.calls] == [8, 8, 4]


def test_rankings_map_back_to_own_candidates(runner):
    assembler = Assembler(TINY, BUCKETS)
    requests = [make_request(i, 4, n) for i, n in enumerate([1, 3, 4, 2])]
    rankings = rank(runner, assembler, requests)
    for request, ranking in zip(requests, rankings):
        c = request.num_candidates
        assert ranking.request is request
        assert sorted(ranking.order.tolist()) == list(range(c))
        assert ranking.probabilities.shape == (c, TINY.num_actions)
        assert (np.diff(ranking.scores[ranking.order]) <= 0).all()
        # Same as ranking that request alone.
        alone, = rank(runner, assembler, [request])
        np.testing.assert_allclose(ranking.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_array_equal(ranking.order, alone.order)


def test_more_candidates_than_c_rank_in_one_row_as_in_the_reference_layout(runner):
    """Candidate j keeps its reference-layout position (j mod C): each chunk of C ranked
    alone gives the same probabilities as its place in the whole request."""
    assembler = Assembler(TINY, BUCKETS)
    big = make_request(7, 5, 10)  # C = 4: the reference layout's rows 4 + 4 + 2
    call, = assembler.assemble([big]).calls
    assert call.batch.candidate_post_hashes.shape[:2] == (1, 16)
    ranking, = rank(runner, assembler, [big])
    assert sorted(ranking.order.tolist()) == list(range(10))
    for start in range(0, 10, 4):  # each chunk scored alone as its own request
        chunk = msgspec.structs.replace(
            big, candidate_post_ids=big.candidate_post_ids[start:start + 4],
            candidate_author_ids=big.candidate_author_ids[start:start + 4],
            candidate_surfaces=big.candidate_surfaces[start:start + 4])
        alone, = rank(runner, assembler, [chunk])
        np.testing.assert_allclose(ranking.probabilities[start:start + 4], alone.probabilities,
                                   atol=1e-5)
    assert (np.diff(ranking.scores[ranking.order]) <= 0).all()


def test_bucket_config_errors():
    with pytest.raises(ConfigError, match="ascending"):
        Buckets(batch_sizes=(4, 2))
    with pytest.raises(ConfigError, match=r"widest candidate bucket \(32\) is below the 33 "):
        BUCKETS.check(TINY, max_candidates=33, cache_budget_mb=1.0)
    per_request = context_cache_bytes(TINY)
    with pytest.raises(ConfigError, match=r"largest model call \(8 requests x .* over the "
                                          r"context cache budget of 0.001 MiB"):
        BUCKETS.check(TINY, max_candidates=32, cache_budget_mb=0.001)
    BUCKETS.check(TINY, max_candidates=32, cache_budget_mb=8 * per_request / MIB)  # just fits


def test_wide_requests_share_a_call_with_fewer_and_map_back_in_order(runner):
    """Requests are grouped by width; a call holds at most `call_candidates` slots; rankings
    come back in request order whatever call each request took."""
    assembler = Assembler(TINY, BUCKETS)
    counts = [3, 20, 1, 9, 17, 4, 30, 2]
    requests = [make_request(i, 3, n) for i, n in enumerate(counts)]
    assembly = assembler.assemble(requests)
    shapes = [(c.batch.candidate_post_hashes.shape[:2], c.requests.tolist())
              for c in assembly.calls]
    assert shapes == [((2, 2), [2, 7]), ((2, 4), [0, 5]), ((1, 16), [3]),
                      ((1, 32), [1]), ((1, 32), [4]), ((1, 32), [6])]
    rankings = rank(runner, assembler, requests)
    for request, ranking in zip(requests, rankings):
        alone, = rank(runner, assembler, [request])
        assert ranking.request is request
        np.testing.assert_allclose(ranking.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_array_equal(ranking.order, alone.order)


def test_padding_to_a_wider_bucket_changes_nothing(runner):
    request = make_request(5, 6, 13)
    narrow, = rank(runner, Assembler(TINY, Buckets(widths=(13,))), [request])
    wide, = rank(runner, Assembler(TINY, Buckets(widths=(64,))), [request])
    np.testing.assert_allclose(wide.probabilities, narrow.probabilities, atol=1e-5)
    np.testing.assert_allclose(wide.scores, narrow.scores, atol=1e-5)
    np.testing.assert_array_equal(wide.order, narrow.order)


def test_widths_double_from_c_up_to_the_cap():
    assert widths_for(8, 1024) == (8, 16, 32, 64, 128, 256, 512, 1024)
    assert widths_for(32, 1000) == (32, 64, 128, 256, 512, 1024)
    assert widths_for(4, 3, small=(1, 2)) == (1, 2, 4)
    assert BUCKETS.shapes() == [(b, 2) for b in (1, 2, 4, 8)] + [(b, 4) for b in (1, 2, 4, 8)] + [
        (1, 8), (2, 8), (4, 8), (1, 16), (2, 16), (1, 32)]


def test_widths_above_full_widths_compile_every_other_batch_size():
    buckets = Buckets(batch_sizes=(1, 2, 4, 8, 16, 32, 64), widths=(8, 16, 256, 1024),
                      call_candidates=2624, full_widths=8)
    assert buckets.batch_sizes_for(8) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets.batch_sizes_for(16) == (1, 4, 16, 64)  # the largest always kept, and 1
    assert buckets.batch_sizes_for(256) == (1, 2, 8)
    assert buckets.batch_sizes_for(1024) == (1, 2)
    assert len(buckets.shapes()) == 7 + 4 + 3 + 2


def test_action_masks_and_multi_hot_are_inverse():
    rows = np.random.default_rng(3).random((5, 7, NUM_ACTIONS)) < 0.4  # [5, 7, A]
    masks = action_masks(rows)  # [5, 7]
    assert masks.dtype == np.uint32 and masks.shape == (5, 7)
    assert int(masks[0, 0]) == sum(1 << i for i in np.flatnonzero(rows[0, 0]))
    np.testing.assert_array_equal(multi_hot(masks), rows.astype(np.float32))
