import pytest

from phoenix.config import ConfigError, HashConfig, RankerConfig, TransformerConfig


def test_defaults_are_reference_demo_config():
    c = RankerConfig()
    t = c.transformer
    assert (c.emb_size, c.num_actions, c.history_seq_len, c.candidate_seq_len) == (128, 19, 32, 8)
    assert (t.num_layers, t.num_q_heads, t.num_kv_heads, t.key_size) == (2, 2, 2, 64)
    assert (t.widening_factor, t.attn_output_multiplier) == (2.0, 0.125)
    assert c.product_surface_vocab_size == 16
    assert (c.hashes.num_user_hashes, c.hashes.num_item_hashes, c.hashes.num_author_hashes) == (2, 2, 2)
    assert t.ffn_size == 176  # int(2*128)*2//3 = 170, rounded up to a multiple of 8


@pytest.mark.parametrize("kwargs,match", [
    ({"num_q_heads": 3, "num_kv_heads": 2}, r"num_q_heads \(3\) must be a multiple"),
    ({"key_size": 63}, r"key_size \(63\) must be even"),
    ({"emb_size": 0}, r"emb_size must be a positive int"),
    ({"widening_factor": -1.0}, "widening_factor must be a positive"),
], ids=["heads-not-multiple", "odd-key-size", "zero-width", "negative-widening"])
def test_impossible_transformer_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TransformerConfig(**kwargs)


def test_hash_rows_must_fit_int32():
    with pytest.raises(ConfigError, match="user_rows"):
        HashConfig(user_rows=2**31)


def test_dict_round_trip():
    c = RankerConfig(transformer=TransformerConfig(num_layers=3), history_seq_len=5)
    assert RankerConfig.from_dict(c.to_dict()) == c
