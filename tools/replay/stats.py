"""How far two rankings of the same candidates agree: Kendall's tau and top-k overlap."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def positions(order: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Index of each of `items` in `order` (every item must occur in `order`)."""
    sorter = np.argsort(order, kind="stable")
    return sorter[np.searchsorted(order, items, sorter=sorter)]


def kendall_tau(order_a: np.ndarray, order_b: np.ndarray) -> float:
    """Kendall's tau between two orders of distinct ids, over the ids both contain.

    Positions have no ties, so this is tau-a = (concordant - discordant) / pairs; 1 for the
    same order, -1 for the reverse, NaN with fewer than two common ids. O(n^2) memory, fine for
    the <= 1024 candidates a request may carry.
    """
    a, b = np.asarray(order_a), np.asarray(order_b)
    in_b = a[np.isin(a, b)]  # [n] common ids in A's order
    n = in_b.shape[0]
    if n < 2:
        return math.nan
    where_b = positions(b, in_b)  # [n] their positions in B
    signs = np.sign(where_b[None, :] - where_b[:, None])  # [n, n] +1 where B agrees with A
    return float(np.triu(signs, 1).sum() / (n * (n - 1) / 2))


def top_k_overlap(order_a: np.ndarray, order_b: np.ndarray, k: int) -> float:
    """|top-k of A ∩ top-k of B| / k', k' = min(k, len A, len B); NaN when either is empty."""
    kk = min(k, len(order_a), len(order_b))
    if kk == 0:
        return math.nan
    return len(np.intersect1d(order_a[:kk], order_b[:kk])) / kk


def nan_stat(values: Sequence[float], stat: Callable[[np.ndarray], Any]) -> float:
    """`stat` of the values that are not NaN; NaN when none is."""
    array = np.asarray(values, np.float64)
    array = array[~np.isnan(array)]
    return float(stat(array)) if array.size else math.nan
