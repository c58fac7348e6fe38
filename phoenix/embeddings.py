"""Hash embedding tables and their lookup, done inside the jitted step.

Shapes: n hash functions of a kind, R rows per function's slice, D width.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from phoenix.config import RankerConfig
from phoenix.model import RecsysBatch, RecsysEmbeddings


class HashTables(NamedTuple):
    """One slice per hash function; row 0 of every slice is the (zero) padding row."""

    user: jnp.ndarray  # [nu, R_user, D]
    post: jnp.ndarray  # [ni, R_post, D]
    author: jnp.ndarray  # [na, R_author, D]


def table_shapes(config: RankerConfig) -> HashTables:
    h, d = config.hashes, config.emb_size
    return HashTables(
        user=(h.num_user_hashes, h.user_rows, d),
        post=(h.num_item_hashes, h.item_rows, d),
        author=(h.num_author_hashes, h.author_rows, d),
    )


def init_tables(config: RankerConfig, key: jax.Array) -> HashTables:
    """Unit-variance rows (the projections scale by 1/sqrt(fan_in)), padding rows zero."""
    keys = jax.random.split(key, 3)
    tables = [jax.random.normal(k, shape, jnp.float32).at[:, 0, :].set(0.0)
              for k, shape in zip(keys, table_shapes(config))]
    return HashTables(*tables)


def _gather(table: jnp.ndarray, hashes: jnp.ndarray) -> jnp.ndarray:
    """table `[n, R, D]`, hashes `[..., n]` -> `[..., n, D]` (hash i reads slice i)."""
    return table[jnp.arange(table.shape[0]), hashes]


def lookup(tables: HashTables, batch: RecsysBatch) -> RecsysEmbeddings:
    return RecsysEmbeddings(
        user_embeddings=_gather(tables.user, batch.user_hashes),  # [B, nu, D]
        history_post_embeddings=_gather(tables.post, batch.history_post_hashes),  # [B,S,ni,D]
        history_author_embeddings=_gather(tables.author, batch.history_author_hashes),
        candidate_post_embeddings=_gather(tables.post, batch.candidate_post_hashes),  # [B,C,ni,D]
        candidate_author_embeddings=_gather(tables.author, batch.candidate_author_hashes),
    )
