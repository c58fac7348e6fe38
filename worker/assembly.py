"""Validated requests -> padded model batches in a few fixed shapes, and scores -> rankings.

Letters: n requests, R model rows (a request with more than C candidates takes several rows
sharing its user and history), N candidates over all requests, S history slots, Cb the
candidate bucket of a call (<= C), A actions. Everything is vectorised over candidates and
history items; Python loops run over requests or model calls only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from phoenix.config import ConfigError, RankerConfig
from phoenix.hashing import Hasher
from phoenix.model import RecsysBatch
from phoenix.runner import RankOutput
from worker.request import RankingRequest


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The shapes the jitted model is compiled for; every batch is padded up to one of them."""

    # Model rows per call, ascending. Larger batches are split into calls of the largest.
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # Candidate slots per row, ascending, the last equal to the model's C. (C,) compiles least.
    candidate_counts: tuple[int, ...] = (8,)
    # Widths, ascending and all > C, to which a request of more than C candidates is padded
    # when its rows are ranked together (see `merge_widths`). Empty: no request has > C.
    merge_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "candidate_counts", "merge_widths"):
            values = getattr(self, name)
            empty_ok = name == "merge_widths"
            if ((not values and not empty_ok) or list(values) != sorted(set(values))
                    or (values and values[0] < 1)):
                raise ConfigError(f"Buckets.{name} must be distinct ascending positive ints, "
                                  f"got {values!r}")

    def check(self, config: RankerConfig) -> None:
        c = config.candidate_seq_len
        if self.candidate_counts[-1] != c:
            raise ConfigError(
                f"the largest candidate bucket ({self.candidate_counts[-1]}) must equal the "
                f"model's candidate_seq_len C ({c})")
        if self.merge_widths and self.merge_widths[0] <= c:
            raise ConfigError(f"merge widths must all exceed C ({c}), got {self.merge_widths}")

    def merge_width(self, num_candidates: int) -> int:
        """The padded width for ranking `num_candidates` (> C) together."""
        for width in self.merge_widths:
            if width >= num_candidates:
                return width
        # Beyond the widths compiled at start (the caps should make this unreachable): the
        # next power of two, so even then only a few shapes ever compile.
        return 1 << (num_candidates - 1).bit_length()

    @property
    def max_rows(self) -> int:
        return self.batch_sizes[-1]

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, candidates) shape a call can have: what warm-up compiles."""
        return [(b, c) for b in self.batch_sizes for c in self.candidate_counts]


def merge_widths(candidate_seq_len: int, max_candidates: int) -> tuple[int, ...]:
    """C*2, C*4, ... up to the first width >= `max_candidates`: every request the caps allow
    is ranked across its rows at one of these widths (padding at most doubles the work of a
    step that is tiny next to the model)."""
    widths, width = [], 2 * candidate_seq_len
    while max_candidates > candidate_seq_len:
        widths.append(width)
        if width >= max_candidates:
            break
        width *= 2
    return tuple(widths)


def _round_up(value: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= value)


class ModelCall(NamedTuple):
    batch: RecsysBatch  # [bucket rows, ...] numpy, zero-padded
    num_rows: int  # real rows at the front of the batch


class Assembly(NamedTuple):
    """One or more padded model calls for a list of requests, and where each candidate sits."""

    calls: list[ModelCall]
    candidate_row: np.ndarray  # [N] global row of each candidate
    candidate_slot: np.ndarray  # [N] slot within that row
    candidate_offsets: np.ndarray  # [n + 1] candidates of request j are [off[j], off[j+1])
    rows_per_request: np.ndarray  # [n]
    candidate_author_hashes: np.ndarray  # [N, na], for re-ranking a request's merged rows


# (raw scores [1, W], author hashes [1, W, na], valid [1, W]) -> (scores [1, W], order [1, W])
MergeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class Ranking:
    """One request's answer, candidates indexed as in the request."""

    request: RankingRequest
    probabilities: np.ndarray  # [c, A]
    scores: np.ndarray  # [c] final score
    order: np.ndarray  # [c] candidate indices, best first


def _concat(requests: Sequence[RankingRequest], field: str) -> np.ndarray:
    return np.concatenate([getattr(r, field) for r in requests])


def _ragged_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ragged lists of `counts` items: (owner index [sum], position within owner [sum])."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return owner, np.arange(int(counts.sum())) - starts[owner]


class Assembler:
    """Turns validated requests into model calls for one model configuration."""

    def __init__(self, config: RankerConfig, buckets: Buckets):
        buckets.check(config)
        self.config = config
        self.buckets = buckets
        self.hasher = Hasher(config.hashes)

    def _history(self, requests: Sequence[RankingRequest]) -> dict[str, np.ndarray]:
        """Per-request history, left-aligned and zero-padded to S: arrays `[n, S, ...]`."""
        cfg, n = self.config, len(requests)
        s, a = cfg.history_seq_len, cfg.num_actions
        counts = np.array([min(r.num_history, s) for r in requests], np.int64)
        # Keep the most recent S items (validation normally trims already).
        kept = [r if r.num_history <= s else _trim_history(r, s) for r in requests]
        owner, pos = _ragged_positions(counts)
        h = self.config.hashes
        out = {
            "history_post_hashes": np.zeros((n, s, h.num_item_hashes), np.int32),
            "history_author_hashes": np.zeros((n, s, h.num_author_hashes), np.int32),
            "history_actions": np.zeros((n, s, a), np.float32),
            "history_product_surface": np.zeros((n, s), np.int32),
        }
        if owner.size:
            out["history_post_hashes"][owner, pos] = self.hasher.posts(
                _concat(kept, "history_post_ids"))
            out["history_author_hashes"][owner, pos] = self.hasher.authors(
                _concat(kept, "history_author_ids"))
            out["history_actions"][owner, pos] = _concat(kept, "history_actions")
            out["history_product_surface"][owner, pos] = _concat(kept, "history_surfaces")
        return out

    def assemble(self, requests: Sequence[RankingRequest]) -> Assembly:
        if not requests:
            raise ValueError("assemble() needs at least one request")
        cfg, h = self.config, self.config.hashes
        c_max = cfg.candidate_seq_len
        counts = np.array([r.num_candidates for r in requests], np.int64)  # [n]
        rows_per_request = -(-counts // c_max)  # [n] ceil
        row_start = np.concatenate([[0], np.cumsum(rows_per_request)[:-1]])  # [n]
        total_rows = int(rows_per_request.sum())
        row_request = np.repeat(np.arange(len(requests)), rows_per_request)  # [R]

        owner, local = _ragged_positions(counts)  # [N]
        candidate_row = row_start[owner] + local // c_max  # [N]
        candidate_slot = local % c_max  # [N]
        width = _round_up(int(min(counts.max(), c_max)), self.buckets.candidate_counts)

        post = np.zeros((total_rows, width, h.num_item_hashes), np.int32)  # [R, Cb, ni]
        author = np.zeros((total_rows, width, h.num_author_hashes), np.int32)  # [R, Cb, na]
        surface = np.zeros((total_rows, width), np.int32)  # [R, Cb]
        author_hashes = self.hasher.authors(_concat(requests, "candidate_author_ids"))  # [N, na]
        post[candidate_row, candidate_slot] = self.hasher.posts(
            _concat(requests, "candidate_post_ids"))
        author[candidate_row, candidate_slot] = author_hashes
        surface[candidate_row, candidate_slot] = _concat(requests, "candidate_surfaces")

        users = self.hasher.users(np.array([r.user_id for r in requests], np.uint64))  # [n, nu]
        per_request = {"user_hashes": users, **self._history(requests)}
        rows = {name: value[row_request] for name, value in per_request.items()}  # [R, ...]
        rows.update(candidate_post_hashes=post, candidate_author_hashes=author,
                    candidate_product_surface=surface)

        calls = [self._call(rows, start, min(start + self.buckets.max_rows, total_rows))
                 for start in range(0, total_rows, self.buckets.max_rows)]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return Assembly(calls, candidate_row, candidate_slot, offsets, rows_per_request,
                        author_hashes)

    def _call(self, rows: dict[str, np.ndarray], start: int, end: int) -> ModelCall:
        size = _round_up(end - start, self.buckets.batch_sizes)
        padded = {}
        for name, value in rows.items():
            block = np.zeros((size,) + value.shape[1:], value.dtype)
            block[: end - start] = value[start:end]
            padded[name] = block
        return ModelCall(RecsysBatch(**padded), end - start)

    def rankings(self, requests: Sequence[RankingRequest], assembly: Assembly,
                 outputs: Sequence[RankOutput], merge: MergeFn) -> list[Ranking]:
        """Maps per-row model outputs back to each request's own candidates. `merge` ranks
        the candidates of a request that took several rows together (the runner's `merge`)."""
        def real_rows(field):
            return np.concatenate([getattr(o, field)[: c.num_rows]
                                   for o, c in zip(outputs, assembly.calls)])

        probs, scores, raw, order = (real_rows(f) for f in
                                     ("probabilities", "scores", "raw_scores", "order"))
        row, slot = assembly.candidate_row, assembly.candidate_slot
        cand_probs, cand_scores, cand_raw = probs[row, slot], scores[row, slot], raw[row, slot]
        result = []
        for j, request in enumerate(requests):
            lo, hi = assembly.candidate_offsets[j], assembly.candidate_offsets[j + 1]
            if assembly.rows_per_request[j] == 1:
                own_order = order[row[lo], : hi - lo]  # padding sorts last
                own_scores = cand_scores[lo:hi]
            else:  # ranked across its rows together, with the same scoring code
                own_scores, own_order = self._merge_rows(
                    merge, cand_raw[lo:hi], assembly.candidate_author_hashes[lo:hi])
            result.append(Ranking(request, cand_probs[lo:hi], own_scores, own_order))
        return result


    def _merge_rows(self, merge: MergeFn, raw: np.ndarray,
                    author_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One request's candidates `[c]` ranked together at a fixed padded width W."""
        c = len(raw)
        width = self.buckets.merge_width(c)
        padded_raw = np.zeros((1, width), np.float32)  # [1, W]
        padded_raw[0, :c] = raw
        padded_authors = np.zeros((1, width) + author_hashes.shape[1:], np.int32)  # [1, W, na]
        padded_authors[0, :c] = author_hashes
        valid = np.zeros((1, width), bool)  # [1, W]
        valid[0, :c] = True
        scores, order = merge(padded_raw, padded_authors, valid)
        return scores[0, :c], order[0, :c]  # padding sorts last, so order[:c] are real


def _trim_history(request: RankingRequest, keep: int) -> RankingRequest:
    """The most recent `keep` history items (history is ordered oldest first)."""
    return dataclasses.replace(
        request,
        history_post_ids=request.history_post_ids[-keep:],
        history_author_ids=request.history_author_ids[-keep:],
        history_actions=request.history_actions[-keep:],
        history_surfaces=request.history_surfaces[-keep:])
