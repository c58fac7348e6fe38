"""Small builders shared by the model tests (not fixtures: plain functions with seeds)."""

import numpy as np

from phoenix.config import HashConfig, RankerConfig, TransformerConfig
from phoenix.hashing import Hasher
from phoenix.model import RecsysBatch

TINY = RankerConfig(
    transformer=TransformerConfig(emb_size=32, num_layers=1, num_q_heads=4, num_kv_heads=2,
                                  key_size=8, widening_factor=2.0),
    hashes=HashConfig(user_rows=64, item_rows=128, author_rows=64),
    history_seq_len=6, candidate_seq_len=4)


def random_batch(config: RankerConfig, batch_size: int, seed: int = 0,
                 history_len: int | None = None, num_candidates: int | None = None
                 ) -> RecsysBatch:
    """A batch of random ids hashed with the config's hasher; shorter lists are padded."""
    rng = np.random.default_rng(seed)
    s, c, a = config.history_seq_len, config.candidate_seq_len, config.num_actions
    history_len = s if history_len is None else history_len
    num_candidates = c if num_candidates is None else num_candidates
    hasher = Hasher(config.hashes)

    def ids(shape, real):
        out = rng.integers(1, 2**63, size=shape, dtype=np.uint64)
        out[..., real:] = 0
        return out

    return RecsysBatch(
        user_hashes=hasher.users(rng.integers(1, 2**63, size=batch_size, dtype=np.uint64)),
        history_post_hashes=hasher.posts(ids((batch_size, s), history_len)),
        history_author_hashes=hasher.authors(ids((batch_size, s), history_len)),
        history_actions=(rng.random((batch_size, s, a)) < 0.3).astype(np.float32),
        history_product_surface=rng.integers(0, config.product_surface_vocab_size,
                                             (batch_size, s)).astype(np.int32),
        candidate_post_hashes=hasher.posts(ids((batch_size, c), num_candidates)),
        candidate_author_hashes=hasher.authors(ids((batch_size, c), num_candidates)),
        candidate_product_surface=rng.integers(0, config.product_surface_vocab_size,
                                               (batch_size, c)).astype(np.int32),
    )
