import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from phoenix import compilations
from phoenix.config import ConfigError
from phoenix.runner import RankingRunner
from phoenix.scoring import ScoringConfig, diversify
from tests.phoenix_helpers import TINY, random_batch


@pytest.fixture(scope="module")
def runner():
    return RankingRunner.create(TINY, seed=0)


def test_same_shape_compiles_once(runner):
    batches = [random_batch(TINY, 3, seed=seed) for seed in range(5)]
    new_size = random_batch(TINY, 5, seed=0)
    before = compilations.count()
    for batch in batches:
        runner.rank(batch)
    assert compilations.count() == before + 1, compilations.last_function()
    runner.rank(new_size)  # a new batch size: exactly one more
    assert compilations.count() == before + 2, compilations.last_function()


def test_fresh_model_is_not_degenerate(runner):
    probs = runner.rank(random_batch(TINY, 8, seed=1)).probabilities
    assert probs.std() > 0.05  # the reference's zero init gives exactly 0.5 everywhere
    assert np.abs(probs - 0.5).max() > 0.2


def test_order_is_by_score_with_padding_last(runner):
    batch = random_batch(TINY, 4, seed=2, num_candidates=3)
    out = runner.rank(batch)
    for row in range(4):
        order = out.order[row]
        assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:]) == [3]
        scores = out.scores[row][order[:3]]
        assert (np.diff(scores) <= 0).all()
        assert np.isneginf(out.scores[row][3])


def test_favorite_only_weights_rank_by_favorite():
    runner = RankingRunner.create(TINY, seed=0, scoring=ScoringConfig(
        action_weights={"favorite": 1.0}, author_diversity_decay=1.0))
    out = runner.rank(random_batch(TINY, 4, seed=3))
    expected = np.argsort(-out.probabilities[:, :, 0], axis=1, kind="stable")
    np.testing.assert_array_equal(out.order, expected)


def test_author_diversity_pushes_repeated_author_down():
    scoring = ScoringConfig(action_weights={"favorite": 1.0}, author_diversity_decay=0.01,
                            author_diversity_floor=0.01)
    runner = RankingRunner.create(TINY, seed=0, scoring=scoring)
    plain = RankingRunner(TINY, runner.params, runner.tables,
                          scoring=ScoringConfig(action_weights={"favorite": 1.0},
                                                author_diversity_decay=1.0))
    batch = random_batch(TINY, 1, seed=4)
    best_two = plain.rank(batch).order[0, :2]
    same_author = np.array(batch.candidate_author_hashes)
    same_author[0, best_two[1]] = same_author[0, best_two[0]]  # top two share an author
    batch = batch._replace(candidate_author_hashes=same_author)
    raw = plain.rank(batch)
    diverse = runner.rank(batch)
    top, second = raw.order[0, 0], raw.order[0, 1]
    assert diverse.order[0, 0] == top
    assert diverse.order[0, -1] == second  # attenuated to 1% it falls to the end
    np.testing.assert_allclose(diverse.probabilities, raw.probabilities, atol=1e-6)


def test_scoring_config_rejects_unknown_action():
    with pytest.raises(ConfigError, match="unknown action.*'favourite'"):
        ScoringConfig(action_weights={"favourite": 1.0})


def _repeats_by_definition(scores, authors, valid):
    """For each valid candidate: valid candidates of the same author (every hash equal)
    ranked above it by score (ties: the earlier index first), counted pair by pair."""
    b, c = scores.shape
    out = np.zeros((b, c), np.int64)
    for row in range(b):
        order = np.argsort(-np.where(valid[row], scores[row], -np.inf), kind="stable")
        rank = np.argsort(order)
        for i in range(c):
            out[row, i] = sum(valid[row, i] and valid[row, j] and rank[j] < rank[i]
                              and (authors[row, j] == authors[row, i]).all() for j in range(c))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_author_repeats_match_the_pairwise_definition(b, c, na, seed):
    """`diversify` counts repeats by sorting; the definition compares every pair."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(b, c)), 1).astype(np.float32)  # ties included
    authors = rng.integers(0, 4, size=(b, c, na)).astype(np.int32)
    valid = rng.random((b, c)) < 0.8
    decay, floor = 0.7, 0.3
    got = np.asarray(jax.jit(diversify)(scores, authors, valid, np.array([decay, floor],
                                                                          np.float32)))
    factor = np.maximum(decay ** _repeats_by_definition(scores, authors, valid), floor)
    expected = np.where(scores >= 0, scores * factor, scores / factor)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-6)
