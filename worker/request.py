"""A ranking request after validation: the contract between `validation` and `assembly`.

Arrays are numpy so that assembly can pad and hash a whole batch without per-item Python.
Letters: s history items kept (<= S), c candidates (any count >= 1), A actions.
"""

from __future__ import annotations

import msgspec
import numpy as np

HISTORY_FROM_REQUEST = "request"
HISTORY_FROM_TABLE = "table"


# A msgspec Struct rather than a frozen dataclass: the worker builds one per message, and a
# Struct is built in C (a frozen dataclass's __init__ costs microseconds). No cycles: gc=False.
class RankingRequest(msgspec.Struct, frozen=True, eq=False, gc=False, kw_only=True):
    request_id: str
    user_id: int  # unsigned 64-bit, never 0
    history_post_ids: np.ndarray  # [s] uint64, most recent last
    history_author_ids: np.ndarray  # [s] uint64
    history_actions: np.ndarray  # [s] uint32 action masks (phoenix.actions: bit i = action i)
    history_surfaces: np.ndarray  # [s] int32 in [0, V)
    candidate_post_ids: np.ndarray  # [c] uint64, distinct
    candidate_author_ids: np.ndarray  # [c] uint64
    candidate_surfaces: np.ndarray  # [c] int32 in [0, V)
    top_k: int | None = None  # answer only the best k candidates (None: all)
    timestamp_ms: int | None = None  # producer's clock, for end-to-end latency
    deadline_ms: int | None = None  # absolute epoch ms after which the answer is useless
    version: int = 1  # the request schema's version (a v2 request gets a v2 result)
    # Where the history came from: the request itself, or (a v2 request without history) the
    # worker's history table, filled in by `worker.history.with_table_history`.
    history_source: str = HISTORY_FROM_REQUEST

    @property
    def num_candidates(self) -> int:
        return int(self.candidate_post_ids.shape[0])

    @property
    def num_history(self) -> int:
        return int(self.history_post_ids.shape[0])
