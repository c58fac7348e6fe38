"""Ranking quality metrics: NDCG of an order against graded gains, and AUC.

Pure numpy, no model code: the evaluation CLI and the results viewer (rolling NDCG) share them.

Conventions
-----------
* A request's candidates are indexed 0..c-1 as in the request. `gains[i]` is how much candidate
  i is worth; `order` is a permutation of 0..c-1, best first (what the ranker served).
* Gains must be >= 0 (DCG with negative gains has no meaningful ideal). Expected weighted
  scores can be negative (negative actions weigh against), so `shift_gains` moves a request's
  gains to start at 0: the worst candidate gains nothing, and a constant offset shared by all
  of a request's candidates does not change its NDCG.
* DCG@k = sum_{r < k} gain[order[r]] / log2(r + 2) (linear gains: they are expected values).
  NDCG@k = DCG@k(order) / DCG@k(ideal order). When every gain is equal (ideal DCG 0 after the
  shift), every order is ideal and NDCG is 1.
* Tied scores: `order_by_scores` keeps input order among ties, as the runner does.
* AUC is the Mann-Whitney probability that a random positive outscores a random negative,
  ties counting one half; NaN when one class is empty.
"""

from __future__ import annotations

import collections

import numpy as np


def shift_gains(gains: np.ndarray) -> np.ndarray:
    """[c] gains of one request -> [c] gains - min(gains) (all >= 0, the worst is 0)."""
    gains = np.asarray(gains, np.float64)
    return gains - gains.min()


def order_by_scores(scores: np.ndarray) -> np.ndarray:
    """[c] scores -> [c] candidate indices best first; ties keep input order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def dcg(ranked_gains: np.ndarray, k: int | None = None) -> float:
    """Gains listed in served order `[c]` -> DCG of the first k (all when k is None)."""
    ranked_gains = np.asarray(ranked_gains, np.float64)[:k]
    discounts = 1.0 / np.log2(np.arange(ranked_gains.shape[0]) + 2.0)
    return float(np.sum(ranked_gains * discounts))


def ndcg(gains: np.ndarray, order: np.ndarray, k: int | None = None) -> float:
    """NDCG@k of serving `order` when candidate i is worth `gains[i]` (`[c]`, >= 0).

    `order` `[m]` lists distinct candidate indices best first: a full permutation (m = c) or
    the served head of one (m < c, e.g. a top_k answer). k defaults to m; a k above c is
    taken as c (NDCG@5 of a 3-candidate request is its NDCG@3); a k above m scores unserved
    ranks as zero gain.
    """
    gains = np.asarray(gains, np.float64)
    order = np.asarray(order)
    c = gains.shape[0] if gains.ndim == 1 else -1
    if gains.ndim != 1 or order.ndim != 1 or order.shape[0] > c or order.shape[0] == 0:
        raise ValueError(f"gains must be 1-D [c] and order 1-D [m] with 1 <= m <= c, got "
                         f"shapes {gains.shape} and {order.shape}")
    if np.any(gains < 0):
        raise ValueError(f"gains must be >= 0, got min {gains.min()!r}; shift a request's "
                         "gains with shift_gains() first")
    if (not np.issubdtype(order.dtype, np.integer) or order.min() < 0 or order.max() >= c
            or np.unique(order).shape[0] != order.shape[0]):
        raise ValueError(f"order must hold distinct candidate indices in 0..{c - 1}, "
                         f"got {order.tolist()}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None (the served length), got {k!r}")
    k = order.shape[0] if k is None else min(k, c)
    ideal = dcg(np.sort(gains)[::-1], k)
    if ideal == 0.0:
        return 1.0  # all gains equal: every order is ideal
    return dcg(gains[order], k) / ideal


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of `scores` `[n]` for binary `labels` `[n]`; ties count 1/2; NaN if one class."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same size, got {scores.size} "
                         f"and {labels.size}")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mid-ranks (1-based): tied scores share the mean of the ranks they span.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(mid_rank[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class RollingNDCG:
    """Mean NDCG@k over the last `window` requests (for a live viewer)."""

    def __init__(self, k: int | None = 5, window: int = 500):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.k = k
        self._values: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, gains: np.ndarray, order: np.ndarray, shift: bool = True) -> float:
        """Adds one request (gains `[c]` in request order, served `order` `[c]`); returns
        its NDCG. `shift=True` applies `shift_gains` first (gains may be negative)."""
        value = ndcg(shift_gains(gains) if shift else gains, order, self.k)
        self._values.append(value)
        return value

    @property
    def count(self) -> int:
        return len(self._values)

    @property
    def mean(self) -> float:
        """NaN before the first request."""
        return float(np.mean(self._values)) if self._values else float("nan")
