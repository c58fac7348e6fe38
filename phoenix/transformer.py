"""A Grok-1 style decoder: RMSNorm, rotary grouped-query attention, gated GELU FFN.

Shapes: B batch, T sequence, D width, Hq/Hkv query/key-value heads, G = Hq/Hkv, K key size,
F FFN hidden size, P cached context positions, L layers. Parameters are float32; activations
run in the dtype of the input.

Two ways through the same parameters: the whole sequence with a mask (`context=None`), or
tokens that attend only to a cached context (per-layer keys and values of earlier positions)
and to themselves, which is what a candidate sees under the recsys mask.
"""

from __future__ import annotations

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from phoenix.config import TransformerConfig

_NORM_EPS = 1e-5
_LOGIT_CAP = 30.0
_MASKED_LOGIT = -1e30
_ROTARY_BASE = 10000.0


def matmul_precision(dtype) -> jax.lax.Precision:
    """Full float32 products in float32 mode (GPUs default to TF32), native ones in bf16."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


class Linear(hk.Module):
    """`x @ w` without bias; `w` is float32 and cast to the activation dtype."""

    def __init__(self, output_size: int, name: str):
        super().__init__(name=name)
        self.output_size = output_size

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        input_size = x.shape[-1]
        init = hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size))
        w = hk.get_parameter("w", [input_size, self.output_size], jnp.float32, init=init)
        return jnp.matmul(x, w.astype(x.dtype), precision=matmul_precision(x.dtype))


class RMSNorm(hk.Module):
    """`x * rsqrt(mean(x^2) + eps) * scale`, computed in float32, returned in x's dtype."""

    def __init__(self, name: str = "rms_norm"):
        super().__init__(name=name)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = hk.get_parameter("scale", [x.shape[-1]], jnp.float32, init=jnp.ones)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + _NORM_EPS)
        return (normed * scale).astype(x.dtype)


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    """[x1, x2] -> [-x2, x1] on the two halves of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray | None = None) -> jnp.ndarray:
    """Rotary position embedding of `x` `[B, T, H, K]` at `positions` `[T]` (default 0..T-1)."""
    seq_len, key_size = x.shape[1], x.shape[-1]
    if positions is None:
        positions = jnp.arange(seq_len)
    inv_freq = 1.0 / _ROTARY_BASE ** (jnp.arange(0, key_size, 2, dtype=jnp.float32) / key_size)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, K/2]
    phase = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, T, 1, K]
    x32 = x.astype(jnp.float32)
    out = x32 * jnp.cos(phase) + rotate_half(x32) * jnp.sin(phase)  # [B, T, H, K]
    return out.astype(x.dtype)


class LayerContext(NamedTuple):
    """One layer's keys and values of the cached context positions (rotary applied)."""

    keys: jnp.ndarray  # [B, P, Hkv, K]
    values: jnp.ndarray  # [B, P, Hkv, K]
    valid: jnp.ndarray  # [B, P] bool: positions that hold a real token


class MultiHeadAttention(hk.Module):
    """Grouped-query attention with soft-capped logits and no 1/sqrt(K) factor."""

    def __init__(self, config: TransformerConfig, name: str = "multi_head_attention"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None,
                 positions: jnp.ndarray | None = None,
                 context: LayerContext | None = None) -> tuple[jnp.ndarray, LayerContext]:
        """x `[B, T, D]` at rotary `positions` `[T]` (default 0..T-1) -> (`[B, T, D]`, this
        layer's keys and values of x).

        Without `context`: x attends to x under `mask` `[B, 1, T, T]` (1 = may attend). With
        it: each token attends to the valid context positions and to itself, where `mask`
        `[B, T]` bool says it is real (a padding token attends to the context only): exactly
        what a candidate sees under the recsys mask and the padding mask.
        """
        cfg = self.config
        batch, seq_len, width = x.shape
        hq, hkv, k_size = cfg.num_q_heads, cfg.num_kv_heads, cfg.key_size
        group = hq // hkv
        q = Linear(hq * k_size, name="query")(x).reshape(batch, seq_len, hq, k_size)  # [B,T,Hq,K]
        k = Linear(hkv * k_size, name="key")(x).reshape(batch, seq_len, hkv, k_size)  # [B,T,Hkv,K]
        v = Linear(hkv * k_size, name="value")(x).reshape(batch, seq_len, hkv, k_size)  # [B,T,Hkv,K]
        q, k = apply_rotary(q, positions), apply_rotary(k, positions)
        q = q.reshape(batch, seq_len, hkv, group, k_size)  # [B, T, Hkv, G, K]
        precision = matmul_precision(x.dtype)
        if context is None:
            logits = jnp.einsum("btngk,bsnk->bngts", q, k, precision=precision)  # [B,Hkv,G,T,T]
            allowed = mask[:, :, None, :, :] > 0  # [B, 1, 1, T, T]
            weights = _attention_weights(logits, allowed, cfg.attn_output_multiplier, x.dtype)
            out = jnp.einsum("bngts,bsnk->btngk", weights, v, precision=precision)  # [B,T,Hkv,G,K]
        else:
            to_context = jnp.einsum("btngk,bpnk->bngtp", q, context.keys.astype(x.dtype),
                                    precision=precision)  # [B, Hkv, G, T, P]
            to_self = jnp.einsum("btngk,btnk->bngt", q, k, precision=precision)  # [B,Hkv,G,T]
            logits = jnp.concatenate([to_context, to_self[..., None]], axis=-1)  # [..., P+1]
            allowed = jnp.concatenate([
                jnp.broadcast_to(context.valid[:, None, None, None, :], to_context.shape),
                jnp.broadcast_to(mask[:, None, None, :, None], to_self.shape + (1,))],
                axis=-1)  # [B, Hkv, G, T, P+1]
            weights = _attention_weights(logits, allowed, cfg.attn_output_multiplier, x.dtype)
            out = jnp.einsum("bngtp,bpnk->btngk", weights[..., :-1],
                             context.values.astype(x.dtype), precision=precision)
            out = out + jnp.einsum("bngt,btnk->btngk", weights[..., -1], v,
                                   precision=precision)  # [B, T, Hkv, G, K]
        out = out.reshape(batch, seq_len, hq * k_size)  # [B, T, Hq*K], kv-head-major
        own = LayerContext(k, v, jnp.ones((batch, seq_len), bool))
        return Linear(width, name="linear")(out), own  # [B, T, D]


def _attention_weights(logits: jnp.ndarray, allowed: jnp.ndarray, multiplier: float,
                       dtype) -> jnp.ndarray:
    """Scaled, soft-capped, masked softmax over the last axis, in float32."""
    logits = logits.astype(jnp.float32) * multiplier
    logits = _LOGIT_CAP * jnp.tanh(logits / _LOGIT_CAP)
    logits = jnp.where(allowed, logits, _MASKED_LOGIT)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


class DecoderLayer(hk.Module):
    """h + norm(attn(norm(h))), then h + norm(ffn(norm(h)))."""

    def __init__(self, config: TransformerConfig, name: str):
        super().__init__(name=name)
        self.config = config

    def __call__(self, h: jnp.ndarray, mask: jnp.ndarray | None,
                 positions: jnp.ndarray | None = None,
                 context: LayerContext | None = None) -> tuple[jnp.ndarray, LayerContext]:
        """h `[B, T, D]` -> (`[B, T, D]`, this layer's keys and values of h)."""
        # Creation order fixes the names rms_norm, rms_norm_1, rms_norm_2, rms_norm_3.
        pre_attn, post_attn, pre_ffn, post_ffn = (RMSNorm() for _ in range(4))
        attended, own = MultiHeadAttention(self.config)(pre_attn(h), mask, positions, context)
        h = h + post_attn(attended)
        # The FFN's linears live directly in the layer (L/linear, L/linear_v, L/linear_1), so
        # they are built here rather than in a helper method, which Haiku would name-scope.
        x = pre_ffn(h)
        gate = jax.nn.gelu(Linear(self.config.ffn_size, name="linear")(x), approximate=True)
        value = Linear(self.config.ffn_size, name="linear_v")(x)  # [B, T, F]
        return h + post_ffn(Linear(h.shape[-1], name="linear_1")(gate * value)), own  # [B,T,D]


class Transformer(hk.Module):
    def __init__(self, config: TransformerConfig, name: str = "transformer"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, h: jnp.ndarray, mask: jnp.ndarray | None,
                 positions: jnp.ndarray | None = None,
                 contexts: list[LayerContext] | None = None
                 ) -> tuple[jnp.ndarray, list[LayerContext]]:
        """h `[B, T, D]`, mask `[B, 1, T, T]` -> (`[B, T, D]`, each layer's keys and values of
        h, `L x LayerContext`). With `contexts` (one per layer), h attends to those and to
        itself, and mask is `[B, T]` bool, the real tokens (see `MultiHeadAttention`)."""
        own = []
        for i in range(self.config.num_layers):
            context = None if contexts is None else contexts[i]
            h, layer_own = DecoderLayer(self.config, name=f"decoder_layer_{i}")(
                h, mask, positions, context)
            own.append(layer_own)
        return h, own
