import jax.numpy as jnp
import numpy as np
import pytest

from phoenix import make_recsys_attn_mask


def test_small_mask_exact():
    # T = 5: user, 2 history, 2 candidates (candidate_start = 3).
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 1],
    ], np.float32)
    mask = make_recsys_attn_mask(5, 3)
    assert mask.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(np.asarray(mask[0, 0]), expected)


def test_single_candidate_is_plain_causal():
    mask = np.asarray(make_recsys_attn_mask(4, 3)[0, 0])
    np.testing.assert_array_equal(mask, np.tril(np.ones((4, 4), np.float32)))


def test_all_candidates_attend_only_to_themselves():
    mask = np.asarray(make_recsys_attn_mask(4, 0)[0, 0])
    np.testing.assert_array_equal(mask, np.eye(4, dtype=np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.bool_],
                         ids=lambda d: jnp.dtype(d).name)
def test_dtype_kept(dtype):
    assert make_recsys_attn_mask(6, 2, dtype).dtype == jnp.dtype(dtype)


def test_candidates_see_user_and_all_history():
    seq_len, start = 10, 4
    mask = np.asarray(make_recsys_attn_mask(seq_len, start)[0, 0])
    for q in range(start, seq_len):
        assert mask[q, :start].all()
        assert mask[q, start:].sum() == 1 and mask[q, q] == 1
