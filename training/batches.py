"""World samples -> hashed model batches with labels, the input of the jitted train step.

Letters: B rows, S history slots, C candidates, A actions, ni/na/nu hash counts.
Everything is vectorised numpy over the whole batch; only int32 hashes and small float arrays
go to the device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from phoenix.config import ConfigError, RankerConfig
from phoenix.hashing import Hasher
from phoenix.model import RecsysBatch
from training.world import World


class TrainBatch(NamedTuple):
    """One training batch: a pytree, so the jitted step takes it as data."""

    inputs: RecsysBatch  # hashed ids, history left-aligned then zero padding (as the worker)
    labels: np.ndarray  # [B, C, A] float32 0/1, drawn from the world's true probabilities
    valid: np.ndarray  # [B, C] float32 1 at real candidates (the loss ignores padding)


def check_compatible(config: RankerConfig, world: World) -> None:
    """The world's requests must fit the model's slots and surface vocabulary unchanged."""
    w = world.config
    problems = []
    if w.history_len > config.history_seq_len:
        problems.append(f"world history_len {w.history_len} > model S "
                        f"{config.history_seq_len}")
    if w.num_candidates > config.candidate_seq_len:
        problems.append(f"world num_candidates {w.num_candidates} > model C "
                        f"{config.candidate_seq_len}")
    if w.num_surfaces > config.product_surface_vocab_size:
        problems.append(f"world num_surfaces {w.num_surfaces} > model V "
                        f"{config.product_surface_vocab_size}")
    if problems:
        raise ConfigError("the world does not fit the model: " + "; ".join(problems)
                          + "; shrink the WorldConfig or enlarge the RankerConfig")


def _pad_to(x: np.ndarray, axis_len: int, axis: int = 1) -> np.ndarray:
    """Zero-pads `axis` of x up to `axis_len` (the world may use fewer slots than the model)."""
    missing = axis_len - x.shape[axis]
    if missing == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, missing)
    return np.pad(x, widths)


def hash_sample(sample: dict[str, np.ndarray], config: RankerConfig,
                hasher: Hasher) -> TrainBatch:
    """A `World.sample_training_batch` dict -> `TrainBatch` padded to the model's S and C."""
    s, c = config.history_seq_len, config.candidate_seq_len
    hist_posts = _pad_to(sample["history_post_ids"], s)  # [B, S] uint64, 0 = padding
    cand_posts = _pad_to(sample["candidate_post_ids"], c)  # [B, C]
    inputs = RecsysBatch(
        user_hashes=hasher.users(sample["user_ids"]),  # [B, nu]
        history_post_hashes=hasher.posts(hist_posts),  # [B, S, ni]
        history_author_hashes=hasher.authors(_pad_to(sample["history_author_ids"], s)),
        history_actions=_pad_to(sample["history_actions"], s),  # [B, S, A]
        history_product_surface=_pad_to(sample["history_surfaces"], s),  # [B, S]
        candidate_post_hashes=hasher.posts(cand_posts),  # [B, C, ni]
        candidate_author_hashes=hasher.authors(_pad_to(sample["candidate_author_ids"], c)),
        candidate_product_surface=_pad_to(sample["candidate_surfaces"], c),  # [B, C]
    )
    return TrainBatch(inputs=inputs,
                      labels=_pad_to(sample["labels"], c).astype(np.float32),  # [B, C, A]
                      valid=(cand_posts != 0).astype(np.float32))  # [B, C]


class BatchSampler:
    """Deterministic stream of hashed training batches: batch i depends only on (seed, i)."""

    def __init__(self, world: World, config: RankerConfig, batch_size: int, seed: int):
        check_compatible(config, world)
        self.world = world
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.hasher = Hasher(config.hashes)

    def batch(self, index: int) -> TrainBatch:
        # One generator per batch keyed by (seed, index): resumable and order-independent.
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x7EA1, index]))
        sample = self.world.sample_training_batch(rng, self.batch_size)
        return hash_sample(sample, self.config, self.hasher)
