"""Deterministic multi-hashing of unsigned 64-bit ids into embedding-table rows.

Each entity kind (user, post, author) has `n` independent hash functions; function `i` maps
an id to a row in `[1, rows)`. Row 0 is reserved for padding, and id 0 means "no id", so it
maps to 0. Pure numpy on the host: only the int32 rows travel to the device.
"""

from __future__ import annotations

import functools

import numpy as np

from phoenix.config import HashConfig

_KIND_CODES = {"user": 1, "post": 2, "author": 3}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX64_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # SplitMix64's finaliser
_MUL1, _MUL2 = (np.uint64(m) for m in MIX64_MULTIPLIERS)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 with good avalanche, mix64(0) == 0."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MUL1
        x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=256)  # A handful of keys per model, asked for on every batch.
def _function_seed(seed: int, kind: str, index: int) -> np.uint64:
    """A distinct 64-bit key per (model seed, entity kind, hash function)."""
    base = np.array([(seed * 1_000_003 + _KIND_CODES[kind] * 1009 + index) % 2**64],
                    dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(base * _GOLDEN)[0]


def hash_ids(ids: np.ndarray, kind: str, num_hashes: int, rows: int, seed: int) -> np.ndarray:
    """ids `[...]` uint64 -> rows `[..., n]` int32 in [1, rows); id 0 -> 0 (padding)."""
    ids = np.asarray(ids, dtype=np.uint64)
    out = np.empty(ids.shape + (num_hashes,), dtype=np.int32)
    span = np.uint64(rows - 1)
    for i in range(num_hashes):  # n is 2 or so: a loop over hash functions, not over ids
        mixed = mix64(ids ^ _function_seed(seed, kind, i))
        out[..., i] = (mixed % span + np.uint64(1)).astype(np.int32)
    out[ids == 0] = 0
    return out


class Hasher:
    """Hashes ids of each kind with the functions a model's tables were trained with."""

    def __init__(self, config: HashConfig):
        self.config = config

    def users(self, ids: np.ndarray) -> np.ndarray:
        """[...] -> [..., nu]"""
        c = self.config
        return hash_ids(ids, "user", c.num_user_hashes, c.user_rows, c.seed)

    def posts(self, ids: np.ndarray) -> np.ndarray:
        """[...] -> [..., ni]"""
        c = self.config
        return hash_ids(ids, "post", c.num_item_hashes, c.item_rows, c.seed)

    def authors(self, ids: np.ndarray) -> np.ndarray:
        """[...] -> [..., na]"""
        c = self.config
        return hash_ids(ids, "author", c.num_author_hashes, c.author_rows, c.seed)
