"""Model hyperparameters as frozen dataclasses. Defaults are the reference demo configuration.

Letters used throughout `phoenix/`: B requests, S history, C candidates, T = 1 + S + C,
D width, A actions, V product surfaces, nu/ni/na user/post/author hash counts.
"""

from __future__ import annotations

import dataclasses
import math

from phoenix.actions import NUM_ACTIONS
from phoenix.errors import PhoenixError


class ConfigError(PhoenixError, ValueError):
    """A configuration that cannot describe a working model."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    emb_size: int = 128  # D, the width of every token.
    num_layers: int = 2  # Decoder layers.
    num_q_heads: int = 2  # Hq.
    num_kv_heads: int = 2  # Hkv; Hq must be a multiple of it (grouped-query attention).
    key_size: int = 64  # K per head; even, because rotary embedding splits it in halves.
    widening_factor: float = 2.0  # FFN hidden size before the 2/3 and round-up-to-8 rule.
    attn_output_multiplier: float = 0.125  # Scales q.k (there is no 1/sqrt(K)).

    def __post_init__(self) -> None:
        for name in ("emb_size", "num_layers", "num_q_heads", "num_kv_heads", "key_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0,
                     f"TransformerConfig.{name} must be a positive int, got {value!r}")
        _require(self.num_q_heads % self.num_kv_heads == 0,
                 f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads "
                 f"({self.num_kv_heads}); pick Hq = g * Hkv")
        _require(self.key_size % 2 == 0,
                 f"key_size ({self.key_size}) must be even: rotary embedding rotates half-pairs")
        _require(self.widening_factor > 0 and math.isfinite(self.widening_factor),
                 f"widening_factor must be a positive number, got {self.widening_factor!r}")
        _require(math.isfinite(self.attn_output_multiplier),
                 f"attn_output_multiplier must be finite, got {self.attn_output_multiplier!r}")

    @property
    def ffn_size(self) -> int:
        """F = int(widening * D) * 2 // 3, rounded up to a multiple of 8."""
        size = int(self.widening_factor * self.emb_size) * 2 // 3
        return size + (-size) % 8


@dataclasses.dataclass(frozen=True)
class HashConfig:
    num_user_hashes: int = 2  # nu: hash functions (and table slices) per user id.
    num_item_hashes: int = 2  # ni: per post id.
    num_author_hashes: int = 2  # na: per author id.
    user_rows: int = 4096  # Rows per user table slice; row 0 is padding.
    item_rows: int = 4096  # Rows per post table slice.
    author_rows: int = 4096  # Rows per author table slice.
    seed: int = 0  # Seeds the hash functions: a model's tables are tied to it.

    def __post_init__(self) -> None:
        for name in ("num_user_hashes", "num_item_hashes", "num_author_hashes"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1,
                     f"HashConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("user_rows", "item_rows", "author_rows"):
            value = getattr(self, name)
            _require(isinstance(value, int) and 2 <= value <= 2**31 - 1,
                     f"HashConfig.{name} must be an int in [2, 2^31), got {value!r} "
                     "(row 0 is padding, hashes are int32)")


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    transformer: TransformerConfig = TransformerConfig()
    hashes: HashConfig = HashConfig()
    num_actions: int = NUM_ACTIONS  # A.
    history_seq_len: int = 32  # S: history slots per request (most recent kept).
    candidate_seq_len: int = 8  # C: candidate slots per model row.
    product_surface_vocab_size: int = 16  # V.

    def __post_init__(self) -> None:
        for name in ("num_actions", "history_seq_len", "candidate_seq_len",
                     "product_surface_vocab_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0,
                     f"RankerConfig.{name} must be a positive int, got {value!r}")

    @property
    def emb_size(self) -> int:
        return self.transformer.emb_size

    @property
    def seq_len(self) -> int:
        """T = 1 + S + C."""
        return 1 + self.history_seq_len + self.candidate_seq_len

    @property
    def candidate_start(self) -> int:
        return 1 + self.history_seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RankerConfig":
        data = dict(data)
        transformer = TransformerConfig(**data.pop("transformer", {}))
        hashes = HashConfig(**data.pop("hashes", {}))
        return cls(transformer=transformer, hashes=hashes, **data)
