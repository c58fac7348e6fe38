"""Parameter initialisation and the parameter layout a config implies."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phoenix.config import RankerConfig
from phoenix.embeddings import init_tables, lookup
from phoenix.model import RecsysBatch, build_model

Params = Any  # Haiku's nested {module_path: {name: array}} mapping


def dummy_batch(config: RankerConfig, batch_size: int = 1,
                num_candidates: int | None = None) -> RecsysBatch:
    """An all-padding batch `[batch_size, ...]` with C = `num_candidates` (default the
    config's), for init and warm-up."""
    h = config.hashes
    b, s = batch_size, config.history_seq_len
    c = config.candidate_seq_len if num_candidates is None else num_candidates
    return RecsysBatch(
        user_hashes=np.zeros((b, h.num_user_hashes), np.int32),
        history_post_hashes=np.zeros((b, s, h.num_item_hashes), np.int32),
        history_author_hashes=np.zeros((b, s, h.num_author_hashes), np.int32),
        history_actions=np.zeros((b, s, config.num_actions), np.float32),
        history_product_surface=np.zeros((b, s), np.int32),
        candidate_post_hashes=np.zeros((b, c, h.num_item_hashes), np.int32),
        candidate_author_hashes=np.zeros((b, c, h.num_author_hashes), np.int32),
        candidate_product_surface=np.zeros((b, c), np.int32),
    )


def init_params(config: RankerConfig, key: jax.Array) -> Params:
    """Fan-in scaled weights and unit norm scales: a fresh model already ranks non-trivially
    (the reference's all-zero init scores every candidate 0.5)."""
    model = build_model(config)
    tables = jax.eval_shape(lambda: init_tables(config, key))
    batch = dummy_batch(config)
    emb = jax.eval_shape(lookup, tables, batch)
    emb = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), emb)
    return model.init(key, batch, emb)
