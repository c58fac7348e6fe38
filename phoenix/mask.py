"""The candidate-isolation attention mask.

Positions are `[user, history..., candidates...]`; T = 1 + S + C.
"""

import jax.numpy as jnp


def make_recsys_attn_mask(seq_len: int, candidate_start_offset: int,
                          dtype=jnp.float32) -> jnp.ndarray:
    """Returns `[1, 1, T, T]`, 1 where query q may attend to key k.

    Causal for user and history; a candidate sees the user, the whole history and itself,
    never another candidate, so its score cannot depend on its neighbours.
    """
    q = jnp.arange(seq_len)[:, None]  # [T, 1]
    k = jnp.arange(seq_len)[None, :]  # [1, T]
    causal = k <= q  # [T, T]
    both_candidates = (q >= candidate_start_offset) & (k >= candidate_start_offset)  # [T, T]
    allowed = jnp.where(both_candidates, q == k, causal)  # [T, T]
    return allowed.astype(dtype)[None, None, :, :]  # [1, 1, T, T]
