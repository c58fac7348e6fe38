"""The Phoenix ranker: tokens from hashed-id embeddings, the transformer, per-action logits.

Shapes: B requests, S history, C candidates, T = 1 + S + C, D width, A actions,
V product surfaces, nu/ni/na user/post/author hash counts, P = 1 + S context positions,
M candidates scored against one cached context, L layers, Hkv key-value heads, K key size.

Two ways to the same logits with the same parameters: the whole `[user, history, candidates]`
sequence (`build_model`, the reference layout), or the context `[user, history]` encoded once
and any number of candidates scored against its cached keys and values (`build_prefix_model`):
under the recsys mask a candidate sees only the context and itself, so both agree.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import haiku as hk
import jax.numpy as jnp
import numpy as np

from phoenix.config import RankerConfig
from phoenix.mask import make_recsys_attn_mask
from phoenix.transformer import LayerContext, RMSNorm, Transformer, matmul_precision


class RecsysBatch(NamedTuple):
    """The integer and small float inputs of one batch; hash 0 is padding."""

    user_hashes: jnp.ndarray  # [B, nu] int32
    history_post_hashes: jnp.ndarray  # [B, S, ni] int32
    history_author_hashes: jnp.ndarray  # [B, S, na] int32
    history_actions: jnp.ndarray  # [B, S, A] float32 multi-hot
    history_product_surface: jnp.ndarray  # [B, S] int32
    candidate_post_hashes: jnp.ndarray  # [B, C, ni] int32
    candidate_author_hashes: jnp.ndarray  # [B, C, na] int32
    candidate_product_surface: jnp.ndarray  # [B, C] int32


class ContextCache(NamedTuple):
    """Every layer's keys and values of the context positions `[user, history...]`."""

    keys: jnp.ndarray  # [L, B, P, Hkv, K]
    values: jnp.ndarray  # [L, B, P, Hkv, K]
    valid: jnp.ndarray  # [B, P] bool: real user / history positions

    def layers(self) -> list[LayerContext]:
        return [LayerContext(self.keys[i], self.values[i], self.valid)
                for i in range(self.keys.shape[0])]


def context_cache_bytes(config: RankerConfig, itemsize: int = 4) -> int:
    """Bytes of one request's `ContextCache`: keys and values `[L, P, Hkv, K]` of `itemsize`
    bytes each (4 for float32), plus the `[P]` validity mask."""
    t, p = config.transformer, config.candidate_start
    return 2 * t.num_layers * p * t.num_kv_heads * t.key_size * itemsize + p


class RecsysEmbeddings(NamedTuple):
    """One looked-up row per hash, not yet concatenated."""

    user_embeddings: jnp.ndarray  # [B, nu, D]
    history_post_embeddings: jnp.ndarray  # [B, S, ni, D]
    history_author_embeddings: jnp.ndarray  # [B, S, na, D]
    candidate_post_embeddings: jnp.ndarray  # [B, C, ni, D]
    candidate_author_embeddings: jnp.ndarray  # [B, C, na, D]


def _flatten_hashes(x: jnp.ndarray) -> jnp.ndarray:
    """[..., n, D] -> [..., n*D]: the n hash rows are concatenated, not summed."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def context_padding_mask(batch: RecsysBatch) -> jnp.ndarray:
    """[B, P] bool: which context positions hold a real user or history item."""
    user = batch.user_hashes[:, :1] != 0  # [B, 1]
    history = batch.history_post_hashes[:, :, 0] != 0  # [B, S]
    return jnp.concatenate([user, history], axis=1)  # [B, P]


def padding_mask(batch: RecsysBatch) -> jnp.ndarray:
    """[B, T] bool: which token positions hold a real user, history item or candidate."""
    candidates = batch.candidate_post_hashes[:, :, 0] != 0  # [B, C]
    return jnp.concatenate([context_padding_mask(batch), candidates], axis=1)  # [B, T]


def _dot(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    return jnp.matmul(x, w, precision=matmul_precision(x.dtype))


def _fan_in_param(name: str, shape: list[int]) -> jnp.ndarray:
    init = hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(shape[0]))
    return hk.get_parameter(name, shape, jnp.float32, init=init)


class PhoenixModel(hk.Module):
    """Input tokens -> transformer -> per-action logits at the candidate positions.

    Everything happens in `__call__`: Haiku scopes parameters made in other methods under
    `~method`, and the checkpoint layout wants them directly under `phoenix_model`.
    """

    def __init__(self, config: RankerConfig, name: str = "phoenix_model"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, batch: RecsysBatch, emb: RecsysEmbeddings, transformer: Transformer,
                 dtype=jnp.float32, stage: str = "full",
                 cache: ContextCache | None = None) -> jnp.ndarray | ContextCache:
        """stage "full": float32 logits `[B, C, A]` of the whole sequence. "context": the
        `ContextCache` of `[user, history]` (candidate fields unused). "candidates": float32
        logits `[B, M, A]` of the batch's M candidates against `cache` (history fields
        unused); candidate j sits at rotary position P + (j mod C), its place in the
        reference layout."""
        cfg = self.config
        d, a, v = cfg.emb_size, cfg.num_actions, cfg.product_surface_vocab_size
        nu, ni, na = (cfg.hashes.num_user_hashes, cfg.hashes.num_item_hashes,
                      cfg.hashes.num_author_hashes)
        proj_user = _fan_in_param("proj_mat_1", [nu * d, d])
        proj_candidate = _fan_in_param("proj_mat_2", [(ni + na + 1) * d, d])
        proj_history = _fan_in_param("proj_mat_3", [(ni + na + 2) * d, d])
        action_projection = _fan_in_param("action_projection", [a, d])
        surface_table = _fan_in_param("product_surface_embedding_table", [v, d])
        unembeddings = _fan_in_param("unembeddings", [d, a])

        def context_tokens() -> jnp.ndarray:
            user = _dot(_flatten_hashes(emb.user_embeddings)[:, None, :], proj_user)  # [B,1,D]
            actions = batch.history_actions.astype(jnp.float32)  # [B, S, A]
            action_emb = _dot(2.0 * actions - 1.0, action_projection)  # [B, S, D]
            action_emb = action_emb * jnp.any(actions != 0, axis=-1, keepdims=True)  # [B,S,D]
            history = jnp.concatenate([
                _flatten_hashes(emb.history_post_embeddings),  # [B, S, ni*D]
                _flatten_hashes(emb.history_author_embeddings),  # [B, S, na*D]
                action_emb,  # [B, S, D]
                jnp.take(surface_table, batch.history_product_surface, axis=0),  # [B, S, D]
            ], axis=-1)
            history = _dot(history, proj_history)  # [B, S, D]
            return jnp.concatenate([user, history], axis=1).astype(dtype)  # [B, P, D]

        def candidate_tokens() -> jnp.ndarray:
            candidates = jnp.concatenate([
                _flatten_hashes(emb.candidate_post_embeddings),  # [B, C, ni*D]
                _flatten_hashes(emb.candidate_author_embeddings),  # [B, C, na*D]
                jnp.take(surface_table, batch.candidate_product_surface, axis=0),  # [B, C, D]
            ], axis=-1)
            return _dot(candidates, proj_candidate).astype(dtype)  # [B, C, D]

        def logits_of(h: jnp.ndarray) -> jnp.ndarray:
            return _dot(RMSNorm()(h).astype(jnp.float32), unembeddings)  # [B, ., A]

        if stage == "context":
            tokens = context_tokens()  # [B, P, D]
            p = tokens.shape[1]
            valid = context_padding_mask(batch)  # [B, P]
            mask = make_recsys_attn_mask(p, p, jnp.float32)  # [1, 1, P, P]: causal
            mask = mask * valid[:, None, None, :].astype(jnp.float32)  # [B, 1, P, P]
            _, layers = transformer(tokens, mask)
            return ContextCache(jnp.stack([layer.keys for layer in layers]),  # [L,B,P,Hkv,K]
                                jnp.stack([layer.values for layer in layers]), valid)
        if stage == "candidates":
            tokens = candidate_tokens()  # [B, M, D]
            p = cache.valid.shape[1]
            positions = p + jnp.arange(tokens.shape[1]) % cfg.candidate_seq_len  # [M]
            real = batch.candidate_post_hashes[:, :, 0] != 0  # [B, M]
            h, _ = transformer(tokens, real, positions, cache.layers())  # [B, M, D]
            return logits_of(h)  # [B, M, A]

        tokens = jnp.concatenate([context_tokens(), candidate_tokens()], axis=1)  # [B, T, D]
        # S and C come from the batch, not the config: assembly may use a smaller candidate
        # bucket than the configured maximum C, and positions are the same either way.
        candidate_start = 1 + batch.history_post_hashes.shape[1]
        mask = make_recsys_attn_mask(tokens.shape[1], candidate_start, jnp.float32)  # [1,1,T,T]
        mask = mask * padding_mask(batch)[:, None, None, :].astype(jnp.float32)  # [B,1,T,T]
        h, _ = transformer(tokens, mask)  # [B, T, D]
        return logits_of(h[:, candidate_start:, :])  # [B, C, A]


def phoenix_forward(config: RankerConfig, batch: RecsysBatch, emb: RecsysEmbeddings,
                    dtype=jnp.float32) -> jnp.ndarray:
    """The whole model, to be wrapped in `hk.transform`. Returns logits `[B, C, A]` float32.

    The transformer is built at the top level (not inside `phoenix_model`) so that parameter
    paths are `transformer/decoder_layer_i/...`, as in the reference checkpoints.
    """
    transformer = Transformer(config.transformer)
    return PhoenixModel(config)(batch, emb, transformer, dtype)


def build_model(config: RankerConfig, dtype=jnp.float32) -> hk.Transformed:
    """`init(rng, batch, emb)` / `apply(params, batch, emb) -> logits [B, C, A]`."""
    return hk.without_apply_rng(hk.transform(
        lambda batch, emb: phoenix_forward(config, batch, emb, dtype)))


class PrefixModel(NamedTuple):
    """The two stages of the cached path, pure functions of the same parameters as
    `build_model`'s (transformer built at the top level, as there)."""

    # (params, batch, emb) -> ContextCache of the batch's user and history
    encode_context: Callable[..., ContextCache]
    # (params, batch, emb, cache) -> logits [B, M, A] of the batch's M candidates
    score_candidates: Callable[..., jnp.ndarray]


def build_prefix_model(config: RankerConfig, dtype=jnp.float32) -> PrefixModel:
    def stage(name: str):
        def forward(batch, emb, cache=None):
            transformer = Transformer(config.transformer)
            return PhoenixModel(config)(batch, emb, transformer, dtype, name, cache)
        return hk.without_apply_rng(hk.transform(forward)).apply

    return PrefixModel(stage("context"), stage("candidates"))
