"""NDCG and AUC on small cases whose expected values are worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.ranking_metrics import RollingNDCG, auc, dcg, ndcg, order_by_scores, shift_gains

LOG2_3 = math.log2(3)  # the discount of rank 2 (0-based rank 1)


# ----------------------------------------------------------------------------- NDCG


def test_dcg_discounts_by_log2_of_rank_plus_one():
    # ranks 1, 2, 3 -> divisors log2(2)=1, log2(3), log2(4)=2
    assert dcg([3.0, 2.0, 1.0]) == pytest.approx(3.0 + 2.0 / LOG2_3 + 1.0 / 2.0)
    assert dcg([3.0, 2.0, 1.0], k=2) == pytest.approx(3.0 + 2.0 / LOG2_3)


def test_ideal_order_scores_one():
    assert ndcg([3.0, 2.0, 0.0], [0, 1, 2]) == pytest.approx(1.0)
    assert ndcg([0.0, 5.0, 1.0], [1, 2, 0]) == pytest.approx(1.0)


def test_reversed_order():
    # served gains 0, 2, 3 vs ideal 3, 2, 0
    expected = (0.0 + 2.0 / LOG2_3 + 3.0 / 2.0) / (3.0 + 2.0 / LOG2_3 + 0.0)
    assert ndcg([3.0, 2.0, 0.0], [2, 1, 0]) == pytest.approx(expected)


@pytest.mark.parametrize("k, expected", [
    (1, 2.0 / 3.0),  # served 2 first, ideal 3
    (2, (2.0 + 3.0 / LOG2_3) / (3.0 + 2.0 / LOG2_3)),
], ids=["k1", "k2"])
def test_cutoff(k, expected):
    assert ndcg([3.0, 2.0, 0.0], [1, 0, 2], k) == pytest.approx(expected)


def test_k_above_candidate_count_is_all():
    assert ndcg([1.0, 0.0], [1, 0], 5) == pytest.approx(ndcg([1.0, 0.0], [1, 0]))
    assert ndcg([1.0, 0.0], [1, 0], 5) == pytest.approx((0.0 + 1.0 / LOG2_3) / 1.0)


def test_tied_gains_any_order_among_them_is_ideal():
    assert ndcg([1.0, 1.0, 0.0], [1, 0, 2]) == pytest.approx(1.0)
    expected = (0.0 + 1.0 / LOG2_3 + 1.0 / 2.0) / (1.0 + 1.0 / LOG2_3)
    assert ndcg([1.0, 1.0, 0.0], [2, 0, 1]) == pytest.approx(expected)


def test_all_gains_equal_is_one():
    assert ndcg([0.0, 0.0, 0.0], [2, 1, 0]) == 1.0
    assert ndcg(shift_gains([-2.0, -2.0]), [1, 0]) == 1.0


def test_served_head_of_a_top_k_answer():
    # one candidate served out of three: NDCG@1 by default
    assert ndcg([3.0, 2.0, 1.0], [1]) == pytest.approx(2.0 / 3.0)
    # asked at k=2, the unserved second rank gains nothing
    assert ndcg([3.0, 2.0, 1.0], [1], 2) == pytest.approx(2.0 / (3.0 + 2.0 / LOG2_3))


def test_negative_gains_are_shifted_per_request():
    np.testing.assert_allclose(shift_gains([-1.0, 2.0, -3.0]), [2.0, 5.0, 0.0])
    # shifted gains 2, 5, 0; served order 0, 1, 2 -> 2, 5, 0; ideal 5, 2, 0
    expected = (2.0 + 5.0 / LOG2_3) / (5.0 + 2.0 / LOG2_3)
    assert ndcg(shift_gains([-1.0, 2.0, -3.0]), [0, 1, 2]) == pytest.approx(expected)


def test_negative_gains_unshifted_are_refused():
    with pytest.raises(ValueError, match="shift_gains"):
        ndcg([-1.0, 2.0], [0, 1])


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1, 3], [-1, 0, 1], []],
                         ids=["duplicate", "out-of-range", "negative", "empty"])
def test_bad_orders_are_refused(order):
    with pytest.raises(ValueError):
        ndcg([1.0, 2.0, 3.0], np.array(order, dtype=np.int64))


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="k must be"):
        ndcg([1.0, 2.0], [0, 1], 0)


def test_order_by_scores_breaks_ties_by_input_order():
    np.testing.assert_array_equal(order_by_scores([0.5, 0.9, 0.5, 0.9]), [1, 3, 0, 2])
    np.testing.assert_array_equal(order_by_scores([1.0, 1.0, 1.0]), [0, 1, 2])


def test_rolling_ndcg_keeps_the_window():
    rolling = RollingNDCG(k=None, window=2)
    assert math.isnan(rolling.mean)
    first = rolling.add([3.0, 2.0, 0.0], [2, 1, 0])  # 0.648...
    assert first == pytest.approx((2.0 / LOG2_3 + 1.5) / (3.0 + 2.0 / LOG2_3))
    rolling.add([1.0, 0.0], [0, 1])  # 1.0
    rolling.add([-1.0, 0.0], [0, 1])  # shifted 0, 1: served 0 first -> (1/log2 3) / 1
    assert rolling.count == 2
    assert rolling.mean == pytest.approx((1.0 + 1.0 / LOG2_3) / 2.0)


# ----------------------------------------------------------------------------- AUC


def test_auc_counts_won_pairs():
    # positives 0.35, 0.8; negatives 0.1, 0.4: won pairs (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3/4
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_perfect_and_inverted():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == pytest.approx(0.0)


def test_auc_ties_count_one_half():
    # positives both 0.5; negatives 0.5 (tie, 1/2 each) and 0.2 (won): (0.5+1)*2 / 4
    assert auc([0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auc([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(0.5)


def test_auc_needs_both_classes():
    assert math.isnan(auc([0.1, 0.2], [1, 1]))
    assert math.isnan(auc([0.1, 0.2], [0, 0]))


def test_auc_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="same size"):
        auc([0.1, 0.2, 0.3], [1, 0])
