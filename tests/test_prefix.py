"""The cached-context path (encode the user and history once, score any number of candidates
against it) equals the reference layout's multi-row computation."""

import dataclasses

import jax
import numpy as np
import pytest

from bench.candidates import as_rows
from phoenix.config import HashConfig, RankerConfig, TransformerConfig
from phoenix.embeddings import init_tables, lookup
from phoenix.model import RecsysBatch, build_model, build_prefix_model
from phoenix.params import init_params
from phoenix.scoring import finalize
from tests.phoenix_helpers import random_batch

DEMO = RankerConfig(
    transformer=TransformerConfig(emb_size=64, num_layers=2, num_q_heads=2, num_kv_heads=2,
                                  key_size=32),
    hashes=HashConfig(user_rows=1024, item_rows=4096, author_rows=1024),
    history_seq_len=32, candidate_seq_len=8)
GQA = RankerConfig(
    transformer=TransformerConfig(emb_size=48, num_layers=3, num_q_heads=4, num_kv_heads=2,
                                  key_size=12),
    hashes=HashConfig(num_user_hashes=3, num_item_hashes=3, num_author_hashes=2,
                      user_rows=256, item_rows=512, author_rows=256),
    history_seq_len=10, candidate_seq_len=8)


def request(config: RankerConfig, n: int, history_len: int, seed: int) -> RecsysBatch:
    """One request with `n` candidates as a [1, n] batch (its own user and history)."""
    wide = dataclasses.replace(config, candidate_seq_len=n)
    return random_batch(wide, 1, seed=seed, history_len=history_len, num_candidates=n)


@pytest.mark.slow
@pytest.mark.parametrize("config", [DEMO, GQA], ids=["demo", "gqa-3layers-multihash"])
def test_cached_context_equals_the_multi_row_path(config):
    key = jax.random.PRNGKey(7)
    params, tables = init_params(config, key), init_tables(config, key)
    grouped = jax.jit(build_model(config).apply)
    prefix = build_prefix_model(config)
    encode, score = jax.jit(prefix.encode_context), jax.jit(prefix.score_candidates)
    c = config.candidate_seq_len
    for seed, (n, history_len) in enumerate([(1, config.history_seq_len), (c - 1, 3), (c, 0),
                                             (c + 1, 5), (100, config.history_seq_len - 1),
                                             (1024, config.history_seq_len)]):
        batch = request(config, n, history_len, seed)
        rows = as_rows(batch, c)
        expected = np.asarray(grouped(params, rows, lookup(tables, rows)))  # [rows, C, A]
        expected = expected.reshape(-1, config.num_actions)[:n]  # [n, A]
        emb = lookup(tables, batch)
        cache = encode(params, batch, emb)
        got = np.asarray(score(params, batch, emb, cache))[0]  # [n, A]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"n={n}, history={history_len}")


def test_cached_step_ranks_a_request_like_the_multi_row_path(tiny_runner):
    """Probabilities, scores and order of a 37-candidate request (TINY: C=4, so 10 rows in
    the reference layout) from `rank_cached` equal the reference layout's rows ranked by
    `rank`, their weighted scores re-ranked together with the same scoring functions."""
    runner = tiny_runner
    config = runner.config
    batch = request(config, 37, config.history_seq_len - 2, seed=11)
    rows = runner.rank(as_rows(batch, config.candidate_seq_len))
    raw = rows.raw_scores.reshape(1, -1)[:, :37]  # [1, 37]
    authors = batch.candidate_author_hashes  # [1, 37, na]
    scores, order = jax.jit(finalize)(raw, authors, np.ones((1, 37), bool),
                                      runner.state.diversity)
    got = runner.rank_cached(batch)
    np.testing.assert_allclose(got.probabilities[0],
                               rows.probabilities.reshape(-1, config.num_actions)[:37],
                               atol=1e-5)
    np.testing.assert_allclose(got.scores[0], scores[0], atol=1e-5)
    np.testing.assert_array_equal(got.order[0], order[0])
