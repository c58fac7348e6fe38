"""From per-action probabilities to one final score and a candidate order, inside jit.

Shapes: B requests, C candidates, A actions, na author hashes.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from phoenix.actions import ACTION_INDEX, ACTION_NAMES
from phoenix.config import ConfigError

# Engagement counts for, regret counts against. Magnitudes follow how strongly each action
# signals that the user wanted the post; the negative ones are deliberately heavy.
DEFAULT_ACTION_WEIGHTS: Mapping[str, float] = MappingProxyType({
    "favorite": 1.0, "reply": 0.8, "repost": 0.9, "photo_expand": 0.1, "click": 0.3,
    "profile_click": 0.2, "vqv": 0.2, "share": 0.6, "share_via_dm": 0.4,
    "share_via_copy_link": 0.3, "dwell": 0.4, "quote": 0.8, "quoted_click": 0.1,
    "follow_author": 1.2, "not_interested": -2.0, "block_author": -4.0, "mute_author": -3.0,
    "report": -6.0, "dwell_time": 0.2,
})


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    # Weight of each action's probability in the final score; missing actions weigh 0.
    action_weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: DEFAULT_ACTION_WEIGHTS)
    # Each further candidate by the same author is attenuated by decay^k (k earlier ones)...
    author_diversity_decay: float = 0.7
    # ...but never below this factor. Set decay to 1.0 to turn attenuation off.
    author_diversity_floor: float = 0.3

    def __post_init__(self) -> None:
        unknown = sorted(set(self.action_weights) - set(ACTION_NAMES))
        if unknown:
            raise ConfigError(f"unknown action(s) in action_weights: {unknown}; "
                              f"known actions are {list(ACTION_NAMES)}")
        if not 0.0 < self.author_diversity_decay <= 1.0:
            raise ConfigError("author_diversity_decay must be in (0, 1], got "
                              f"{self.author_diversity_decay!r}")
        if not 0.0 < self.author_diversity_floor <= 1.0:
            raise ConfigError("author_diversity_floor must be in (0, 1], got "
                              f"{self.author_diversity_floor!r}")

    def weight_vector(self) -> np.ndarray:
        """[A] float32 in action order: passed to the jitted step as data, not a constant,
        so changing weights never recompiles."""
        weights = np.zeros(len(ACTION_NAMES), np.float32)
        for name, value in self.action_weights.items():
            weights[ACTION_INDEX[name]] = value
        return weights

    def diversity_params(self) -> np.ndarray:
        """[2] float32: (decay, floor)."""
        return np.array([self.author_diversity_decay, self.author_diversity_floor], np.float32)


def weighted_scores(probs: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """probs `[B, C, A]`, weights `[A]` -> `[B, C]`."""
    return jnp.einsum("bca,a->bc", probs, weights)


def _attenuate(score: jnp.ndarray, factor: jnp.ndarray) -> jnp.ndarray:
    """Push a score down by `factor` <= 1 whatever its sign."""
    return jnp.where(score >= 0, score * factor, score / factor)


def diversify(scores: jnp.ndarray, author_hashes: jnp.ndarray, valid: jnp.ndarray,
              diversity: jnp.ndarray) -> jnp.ndarray:
    """Attenuate repeated authors, in the order of the raw scores.

    scores `[B, C]`, author_hashes `[B, C, na]`, valid `[B, C]`, diversity `[2]` -> `[B, C]`.
    A candidate's repeat count is how many valid candidates of the same author (all na
    hashes equal) rank above it by raw score, ties going to the lower index. One sort by
    (author, score descending, index) lines each author's candidates up in rank order, so
    the count is the position within that run: O(C log C), where comparing every pair would
    be O(C^2). Padding sorts after every valid candidate, so it never counts against one.
    """
    decay, floor = diversity[0], diversity[1]
    c, na = scores.shape[-1], author_hashes.shape[-1]
    descending = -jnp.where(valid, scores, -jnp.inf)  # [B, C]
    position = jnp.broadcast_to(jnp.arange(c), scores.shape)  # [B, C]
    *authors, _, candidate = jax.lax.sort(
        [author_hashes[..., k] for k in range(na)] + [descending, position],
        dimension=-1, num_keys=na + 2)  # na x [B, C] sorted authors, [B, C] their candidate
    authors = jnp.stack(authors, axis=-1)  # [B, C, na]
    starts = jnp.concatenate([
        jnp.ones(scores.shape[:-1] + (1,), bool),
        jnp.any(authors[:, 1:] != authors[:, :-1], axis=-1)], axis=-1)  # [B, C] new author
    run_start = jax.lax.cummax(jnp.where(starts, position, 0), axis=scores.ndim - 1)  # [B, C]
    rows = jnp.arange(scores.shape[0])[:, None]  # [B, 1]
    repeats = jnp.zeros_like(position).at[rows, candidate].set(position - run_start)  # [B, C]
    factor = jnp.maximum(decay ** repeats.astype(jnp.float32), floor)  # [B, C]
    return _attenuate(scores, factor)


def finalize(raw_scores: jnp.ndarray, author_hashes: jnp.ndarray, valid: jnp.ndarray,
             diversity: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Weighted scores `[B, C]` -> (final scores with -inf at padding `[B, C]`, order `[B, C]`).

    Runs inside the jitted step, over all of a request's candidates.
    """
    scores = diversify(raw_scores, author_hashes, valid, diversity)  # [B, C]
    scores = jnp.where(valid, scores, -jnp.inf)  # [B, C]
    return scores, order_candidates(scores, valid)


def order_candidates(scores: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Best first, padding last: `[B, C]` int32 candidate indices. Ties keep input order."""
    return jnp.argsort(-jnp.where(valid, scores, -jnp.inf), axis=-1, stable=True).astype(
        jnp.int32)
