"""The ranking runner: owns params and tables, compiles once per input shape.

Shapes: B requests, C candidates, A actions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phoenix import checkpoint
from phoenix.config import RankerConfig
from phoenix.embeddings import HashTables, init_tables, lookup
from phoenix.model import PrefixModel, RecsysBatch, build_model, build_prefix_model
from phoenix.params import Params, dummy_batch, init_params
from phoenix.scoring import ScoringConfig, finalize, weighted_scores


class RankOutput(NamedTuple):
    probabilities: np.ndarray  # [B, C, A] sigmoid of the logits
    scores: np.ndarray  # [B, C] final score; -inf at padded candidates
    raw_scores: np.ndarray  # [B, C] weighted sum before author diversity (for merging rows)
    order: np.ndarray  # [B, C] int32 candidate indices, best first, padding last


class ModelState(NamedTuple):
    """Everything the jitted step reads besides the batch: a pytree, never closed over."""

    params: Params
    tables: HashTables
    weights: jnp.ndarray  # [A]
    diversity: jnp.ndarray  # [2] (decay, floor)


def rank_step(apply_fn, state: ModelState, batch: RecsysBatch):
    """Pure: lookup, model, sigmoid, final score, order: the fields of `RankOutput`."""
    emb = lookup(state.tables, batch)  # [B, ., n, D]
    return _scored(jax.nn.sigmoid(apply_fn(state.params, batch, emb)), state, batch)


def rank_cached_step(prefix: PrefixModel, state: ModelState, batch: RecsysBatch):
    """Pure, like `rank_step`, but the user and history are encoded once per request and its
    M candidates `[B, M]` (any M, not tied to C) are scored against that cached context."""
    emb = lookup(state.tables, batch)  # [B, ., n, D]
    cache = prefix.encode_context(state.params, batch, emb)
    logits = prefix.score_candidates(state.params, batch, emb, cache)  # [B, M, A]
    return _scored(jax.nn.sigmoid(logits), state, batch)


def _scored(probs: jnp.ndarray, state: ModelState, batch: RecsysBatch):
    """probs `[B, C, A]` -> (probs, final scores `[B, C]`, weighted scores `[B, C]`, order)."""
    valid = batch.candidate_post_hashes[:, :, 0] != 0  # [B, C]
    raw = weighted_scores(probs, state.weights)  # [B, C]
    scores, order = finalize(raw, batch.candidate_author_hashes, valid, state.diversity)
    return probs, scores, raw, order


class RankingRunner:
    """`rank_cached(batch) -> RankOutput` (what the worker serves) and `rank(batch)` (the
    reference layout), each one jitted call: lookup, model, sigmoid, score, order."""

    def __init__(self, config: RankerConfig, params: Params, tables: HashTables,
                 scoring: ScoringConfig = ScoringConfig(), dtype=jnp.float32,
                 model_version: str = "untrained"):
        self.config = config
        self.model_version = model_version
        self.dtype = jnp.dtype(dtype)
        self._model = build_model(config, self.dtype)
        self.state = ModelState(
            params=jax.device_put(params), tables=jax.device_put(tables),
            weights=jnp.asarray(scoring.weight_vector()),
            diversity=jnp.asarray(scoring.diversity_params()))
        self.scoring = scoring
        self._step = jax.jit(functools.partial(rank_step, self._model.apply))
        self._prefix = build_prefix_model(config, self.dtype)
        self._cached_step = jax.jit(functools.partial(rank_cached_step, self._prefix))

    @classmethod
    def create(cls, config: RankerConfig = RankerConfig(), seed: int = 0,
               **kwargs) -> "RankingRunner":
        """A randomly initialised model (deterministic by seed)."""
        params_key, tables_key = jax.random.split(jax.random.PRNGKey(seed))
        return cls(config, init_params(config, params_key), init_tables(config, tables_key),
                   **kwargs)

    @classmethod
    def from_checkpoint(cls, path, expected_config: RankerConfig | None = None,
                        **kwargs) -> "RankingRunner":
        config, params, tables, version = checkpoint.load(path, expected_config)
        return cls(config, params, tables, model_version=version, **kwargs)

    def save(self, path) -> None:
        checkpoint.save(path, self.config, jax.device_get(self.params),
                        jax.device_get(self.tables), self.model_version)

    def rank(self, batch: RecsysBatch) -> RankOutput:
        """Blocking: returns host numpy arrays."""
        return RankOutput(*jax.device_get(self._step(self.state, batch)))

    def rank_eager(self, batch: RecsysBatch) -> RankOutput:
        """`rank_cached`'s computation op by op, without jit: the naive baseline for
        benchmarks."""
        with jax.disable_jit():
            return RankOutput(*jax.device_get(rank_cached_step(self._prefix, self.state, batch)))

    def rank_cached(self, batch: RecsysBatch) -> RankOutput:
        """Blocking `rank_cached_step`: each request's candidates `[B, M]` ranked together
        against its user and history encoded once. Compiles once per (B, M). Equals `rank`
        to float rounding for M <= C, and the reference layout's ceil(M / C) rows for more."""
        return RankOutput(*jax.device_get(self._cached_step(self.state, batch)))

    def warmup(self, shapes: list[tuple[int, int]]) -> None:
        """Compile `rank_cached` for every (requests, candidates) shape now, not in the first
        requests' latency."""
        for rows, candidates in shapes:
            self.rank_cached(dummy_batch(self.config, rows, candidates))

    @property
    def params(self) -> Params:
        return self.state.params

    @property
    def tables(self) -> HashTables:
        return self.state.tables
