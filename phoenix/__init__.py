"""The Phoenix ranking model: a jitted Haiku port of the public Phoenix ranker."""

from phoenix.actions import ACTION_NAMES, NUM_ACTIONS
from phoenix.config import ConfigError, HashConfig, RankerConfig, TransformerConfig
from phoenix.mask import make_recsys_attn_mask

__all__ = [
    "ACTION_NAMES", "NUM_ACTIONS", "ConfigError", "HashConfig", "RankerConfig",
    "TransformerConfig", "make_recsys_attn_mask",
]
