"""Builders of validated requests for unit tests below the wire level."""

import numpy as np

from phoenix.actions import NUM_ACTIONS
from worker.request import RankingRequest


def make_request(seed: int, num_history: int, num_candidates: int, request_id: str | None = None,
                 num_surfaces: int = 16) -> RankingRequest:
    rng = np.random.default_rng(seed)

    def ids(n):
        return rng.integers(1, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)

    return RankingRequest(
        request_id=request_id or f"req-{seed}",
        user_id=int(ids(1)[0]),
        history_post_ids=ids(num_history),
        history_author_ids=ids(num_history),
        history_actions=rng.integers(0, 1 << NUM_ACTIONS, num_history, dtype=np.uint32),
        history_surfaces=rng.integers(0, num_surfaces, num_history).astype(np.int32),
        candidate_post_ids=np.unique(ids(num_candidates * 2))[:num_candidates],
        candidate_author_ids=ids(num_candidates),
        candidate_surfaces=rng.integers(0, num_surfaces, num_candidates).astype(np.int32),
    )
