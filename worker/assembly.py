"""Validated requests -> padded model batches in a few fixed shapes, and scores -> rankings.

Letters: n requests, N candidates over all requests, b requests in one model call, W the
candidate width of a call (any width, not tied to the model's C: the user and history are
encoded once per request and every candidate is scored against that cached context), S
history slots, A actions. Everything is vectorised over candidates and history items; Python
loops run over model calls only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import msgspec
import numpy as np

from phoenix.actions import multi_hot
from phoenix.config import ConfigError, RankerConfig
from phoenix.hashing import Hasher
from phoenix.model import RecsysBatch, context_cache_bytes
from phoenix.runner import RankOutput
from worker.request import RankingRequest

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The shapes the jitted model is compiled for; every call is padded up to one of them."""

    # Requests per call, ascending. More requests of one width are split into several calls.
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # Candidate slots per request, ascending; a request is padded to the first that holds
    # it, so the last must hold the most candidates a request may have (see `widths_for`).
    widths: tuple[int, ...] = (8,)
    # Most candidate slots in one call: wide requests share a call with fewer others, so a
    # call costs about the same whatever its width (one request always fits).
    call_candidates: int = 512
    # Widths up to this get every batch size, wider ones every other (see batch_sizes_for);
    # None: every width gets every size.
    full_widths: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "widths"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ConfigError(f"Buckets.{name} must be distinct ascending positive ints, "
                                  f"got {values!r}")
        if self.call_candidates < 1:
            raise ConfigError(f"Buckets.call_candidates must be >= 1, got {self.call_candidates}")

    def width(self, num_candidates: int) -> int:
        """The padded width of a request with `num_candidates`."""
        for width in self.widths:
            if width >= num_candidates:
                return width
        raise ValueError(f"{num_candidates} candidates exceed the widest bucket "
                         f"({self.widths[-1]}); validation caps requests below it")

    def batch_sizes_for(self, width: int) -> tuple[int, ...]:
        """Call sizes for requests of `width`: those within `call_candidates` (at least 1).
        Above `full_widths`, every other size from the largest down, and 1: each shape costs
        seconds of compilation at start, and a wide call is rarely short of requests."""
        fitting = tuple(b for b in self.batch_sizes if b * width <= self.call_candidates)
        fitting = fitting or self.batch_sizes[:1]
        if self.full_widths is None or width <= self.full_widths:
            return fitting
        return tuple(sorted(set(fitting[::-1][::2]) | {fitting[0]}))

    def call_shapes(self, width: int, count: int) -> list[tuple[int, int]]:
        """The (requests, width) shapes of the calls that rank `count` requests of `width`:
        full calls of the largest size that width allows, then the rest padded up to a size."""
        sizes = self.batch_sizes_for(width)
        step = sizes[-1]
        return [(_round_up(min(step, count - start), sizes), width)
                for start in range(0, count, step)]

    def shapes(self) -> list[tuple[int, int]]:
        """Every (requests, width) shape a call can have: what warm-up compiles."""
        return [(b, w) for w in self.widths for b in self.batch_sizes_for(w)]

    def cache_bytes(self, config: RankerConfig, itemsize: int = 4) -> int:
        """The largest call's context cache (keys and values of every request's context)."""
        return max(b for b, _ in self.shapes()) * context_cache_bytes(config, itemsize)

    def check(self, config: RankerConfig, max_candidates: int, cache_budget_mb: float,
              itemsize: int = 4) -> None:
        """Refuses buckets that leave requests the caps allow without a shape, or whose
        largest call would hold more context cache than the budget."""
        if self.widths[-1] < max_candidates:
            raise ConfigError(
                f"the widest candidate bucket ({self.widths[-1]}) is below the "
                f"{max_candidates} candidates a request may have; add a width >= "
                f"{max_candidates} to the candidate buckets or lower max_candidates")
        per_request = context_cache_bytes(config, itemsize)
        largest = self.cache_bytes(config, itemsize)
        if largest > cache_budget_mb * MIB:
            raise ConfigError(
                f"the largest model call ({largest // per_request} requests x "
                f"{per_request / 1024:.1f} KiB of cached context each = {largest / MIB:.1f} "
                "MiB) is over the "
                f"context cache budget of {cache_budget_mb:g} MiB; lower the largest batch "
                "bucket or raise the budget")


def widths_for(candidate_seq_len: int, max_candidates: int,
               small: tuple[int, ...] = ()) -> tuple[int, ...]:
    """`small` widths, then C, 2C, 4C, ... up to the first width >= `max_candidates`: padding
    at most doubles a request's candidate slots, and a dozen widths cover any cap."""
    widths, width = set(small), candidate_seq_len
    while True:
        widths.add(width)
        if width >= max_candidates:
            return tuple(sorted(widths))
        width *= 2


def _round_up(value: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= value)


class ModelCall(NamedTuple):
    batch: RecsysBatch  # [b, ...] numpy, zero-padded; candidates [b, W]
    requests: np.ndarray  # [real rows] index of each real row's request; rows after are padding

    @property
    def num_rows(self) -> int:
        return len(self.requests)


class Assembly(NamedTuple):
    """Padded model calls for a list of requests: each request is one row of one call."""

    calls: list[ModelCall]
    num_candidates: np.ndarray  # [n] candidates of each request


# batch -> RankOutput (host arrays): the runner's `rank_cached`
RankFn = Callable[[RecsysBatch], RankOutput]


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
        self.config = config
        self.buckets = buckets
        self.hasher = Hasher(config.hashes)

    def _history(self, requests: Sequence[RankingRequest]) -> dict[str, np.ndarray]:
        """Per-request history, left-aligned and zero-padded to S: arrays `[n, S, ...]`."""
        cfg, n = self.config, len(requests)
        s, a = cfg.history_seq_len, cfg.num_actions
        counts = np.fromiter(map(len, (r.history_post_ids for r in requests)), np.int64, n)
        # Keep the most recent S items (validation normally trims already).
        kept = requests if counts.max(initial=0) <= s else [
            r if r.num_history <= s else _trim_history(r, s) for r in requests]
        counts = np.minimum(counts, s)
        owner, pos = _ragged_positions(counts)
        slot = owner * s + pos  # [sum] flat index into [n * S]: one index beats two
        h = self.config.hashes
        shapes = {"history_post_hashes": ((h.num_item_hashes,), np.int32),
                  "history_author_hashes": ((h.num_author_hashes,), np.int32),
                  "history_actions": ((a,), np.float32),
                  "history_product_surface": ((), np.int32)}
        out = {name: np.zeros((n * s,) + shape, dtype) for name, (shape, dtype) in shapes.items()}
        if slot.size:
            out["history_post_hashes"][slot] = self.hasher.posts(_concat(kept, "history_post_ids"))
            out["history_author_hashes"][slot] = self.hasher.authors(
                _concat(kept, "history_author_ids"))
            out["history_actions"][slot] = multi_hot(_concat(kept, "history_actions"))
            out["history_product_surface"][slot] = _concat(kept, "history_surfaces")
        return {name: value.reshape((n, s) + value.shape[1:]) for name, value in out.items()}

    def _widths(self, counts: np.ndarray) -> np.ndarray:
        """[n] the bucket width of each request."""
        widths = np.asarray(self.buckets.widths)
        index = np.searchsorted(widths, counts)  # first width >= count
        if (index == len(widths)).any():
            self.buckets.width(int(counts.max()))  # raises, naming the count
        return widths[index]

    def assemble(self, requests: Sequence[RankingRequest]) -> Assembly:
        """Requests grouped by width bucket, each group cut into calls of at most the
        largest batch size that width allows."""
        if not requests:
            raise ValueError("assemble() needs at least one request")
        counts = np.array([r.num_candidates for r in requests], np.int64)  # [n]
        offsets = np.concatenate([[0], np.cumsum(counts)])  # [n + 1]
        users = self.hasher.users(np.array([r.user_id for r in requests], np.uint64))  # [n, nu]
        context = {"user_hashes": users, **self._history(requests)}  # [n, ...]
        candidates = {  # [N, ...]
            "candidate_post_hashes": self.hasher.posts(_concat(requests, "candidate_post_ids")),
            "candidate_author_hashes": self.hasher.authors(
                _concat(requests, "candidate_author_ids")),
            "candidate_product_surface": _concat(requests, "candidate_surfaces").astype(np.int32),
        }
        width_of = self._widths(counts)  # [n]
        calls = []
        for width in np.unique(width_of).tolist():
            members = np.flatnonzero(width_of == width)
            start = 0
            for size, _ in self.buckets.call_shapes(width, len(members)):
                chunk = members[start:start + size]  # the last may be short of `size`: padded
                calls.append(self._call(chunk, size, width, counts, offsets, context,
                                        candidates))
                start += len(chunk)
        return Assembly(calls, counts)

    def _call(self, members: np.ndarray, size: int, width: int, counts: np.ndarray,
              offsets: np.ndarray, context: dict[str, np.ndarray],
              candidates: dict[str, np.ndarray]) -> ModelCall:
        """One call: the `members` requests' context rows and candidates, zero-padded to
        (`size`, `width`)."""
        padded = {}
        for name, value in context.items():  # [n, ...] -> [b, ...]
            block = np.zeros((size,) + value.shape[1:], value.dtype)
            block[: len(members)] = value[members]
            padded[name] = block
        row, slot = _ragged_positions(counts[members])  # [m] each
        source = offsets[members][row] + slot  # [m] index into the batch's candidates
        for name, value in candidates.items():  # [N, ...] -> [b, W, ...]
            block = np.zeros((size, width) + value.shape[1:], value.dtype)
            block[row, slot] = value[source]
            padded[name] = block
        return ModelCall(RecsysBatch(**padded), members)

    def rankings(self, requests: Sequence[RankingRequest], assembly: Assembly,
                 outputs: Sequence[RankOutput]) -> list[Ranking]:
        """Maps each call's outputs back to its requests' own candidates, in request order."""
        result: list[Ranking | None] = [None] * len(requests)
        for call, output in zip(assembly.calls, outputs):
            for row, j in enumerate(call.requests.tolist()):
                c = int(assembly.num_candidates[j])
                # Padding sorts last, so the first c of the order are the real candidates.
                result[j] = Ranking(requests[j], output.probabilities[row, :c],
                                    output.scores[row, :c], output.order[row, :c])
        return result

    def rank(self, requests: Sequence[RankingRequest], rank_fn: RankFn) -> list[Ranking]:
        """assemble, `rank_fn` on every call, rankings: the whole path, for the pipeline (which
        times `rank_fn`) and for offline callers."""
        assembly = self.assemble(requests)
        return self.rankings(requests, assembly, [rank_fn(call.batch) for call in assembly.calls])


def _trim_history(request: RankingRequest, keep: int) -> RankingRequest:
    """The most recent `keep` history items (history is ordered oldest first)."""
    return msgspec.structs.replace(
        request,
        history_post_ids=request.history_post_ids[-keep:],
        history_author_ids=request.history_author_ids[-keep:],
        history_actions=request.history_actions[-keep:],
        history_surfaces=request.history_surfaces[-keep:])
