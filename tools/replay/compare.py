"""`replay compare`: rank a record file with two checkpoints and compare them request by
request (top-k overlap, Kendall tau, the largest score changes)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from tools.recordfile import RecordReader
from tools.replay import files
from tools.replay.files import ReplayError, chunked, replay_pipeline, to_inputs
from tools.replay.stats import kendall_tau, nan_stat, positions, top_k_overlap
from worker import codec, history
from worker.pipeline import Outcome, RankingPipeline
from worker.settings import Settings

DEFAULT_K = 5
DEFAULT_TOP_CHANGES = 10


class PublishedRanking(NamedTuple):
    """One published result's ranking, best first, as `compare` reads it back."""

    request_id: str
    post_ids: np.ndarray  # [k] uint64
    scores: np.ndarray  # [k] float64


def ranked_from_result(value: bytes) -> PublishedRanking:
    result = codec.decode_message(value)
    ranked = result["ranked"]
    return PublishedRanking(result["request_id"],
                            np.array([c["post_id"] for c in ranked], np.uint64),
                            np.array([c["score"] for c in ranked], np.float64))


class RequestAgreement(NamedTuple):
    request_id: str
    candidates: int  # ids both rankings contain
    overlap: float  # top-k overlap in [0, 1]
    tau: float  # Kendall tau in [-1, 1]; NaN for fewer than two common ids


class ScoreChange(NamedTuple):
    request_id: str
    post_id: int
    score_a: float
    score_b: float

    @property
    def delta(self) -> float:
        return self.score_b - self.score_a


def agreement(a: PublishedRanking, b: PublishedRanking, k: int) -> RequestAgreement:
    return RequestAgreement(a.request_id, int(np.isin(a.post_ids, b.post_ids).sum()),
                            top_k_overlap(a.post_ids, b.post_ids, k),
                            kendall_tau(a.post_ids, b.post_ids))


def score_changes(a: PublishedRanking, b: PublishedRanking) -> list[ScoreChange]:
    """Score of each common post under A and B."""
    common = a.post_ids[np.isin(a.post_ids, b.post_ids)]  # [n]
    score_a = a.scores[positions(a.post_ids, common)]
    score_b = b.scores[positions(b.post_ids, common)]
    return [ScoreChange(a.request_id, post, sa, sb)
            for post, sa, sb in zip(common.tolist(), score_a.tolist(), score_b.tolist())]


@dataclasses.dataclass(frozen=True)
class ComparisonSummary:
    compared: int  # requests both models ranked
    skipped: Mapping[str, int]  # reason -> requests not compared
    mean_overlap: float
    median_overlap: float
    mean_tau: float  # over requests with a defined tau
    median_tau: float
    k: int

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
        return [
            f"compared      {self.compared} requests"
            + (f" (skipped {sum(self.skipped.values())}: {skipped})" if skipped else ""),
            f"top-{self.k} overlap mean {self.mean_overlap:.4f}  median {self.median_overlap:.4f}",
            f"kendall tau   mean {self.mean_tau:.4f}  median {self.median_tau:.4f}",
        ]


class Comparison:
    """Accumulates per-request agreement and the largest score changes, batch by batch."""

    def __init__(self, k: int = DEFAULT_K, top: int = DEFAULT_TOP_CHANGES) -> None:
        if k < 1 or top < 0:
            raise ReplayError(f"k must be >= 1 and top >= 0, got k={k}, top={top}")
        self.k = k
        self.top = top
        self.agreements: list[RequestAgreement] = []
        self.skipped: collections.Counter[str] = collections.Counter()
        self._largest: list[tuple[float, int, ScoreChange]] = []  # min-heap on |delta|
        self._seen = 0  # tie-breaker so the heap never compares ScoreChanges

    def add(self, outcomes_a: Sequence[Outcome], outcomes_b: Sequence[Outcome]
            ) -> list[RequestAgreement]:
        """Compares two models' outcomes for the same records (same order); returns the new
        agreements. A request dead-lettered by either model is counted in `skipped`."""
        if len(outcomes_a) != len(outcomes_b):
            raise ReplayError(f"the two models returned {len(outcomes_a)} and "
                              f"{len(outcomes_b)} outcomes for one batch; they must match")
        added = []
        for out_a, out_b in zip(outcomes_a, outcomes_b):
            if not (out_a.is_result and out_b.is_result):
                codes = (out_a.dead_letter_code, out_b.dead_letter_code)
                reason = (f"dead letter {codes[0]}" if codes[0] == codes[1] else
                          f"dead letter A {codes[0] or '-'} B {codes[1] or '-'}")
                self.skipped[reason] += 1
                continue
            ranked_a, ranked_b = ranked_from_result(out_a.value), ranked_from_result(out_b.value)
            added.append(agreement(ranked_a, ranked_b, self.k))
            for change in score_changes(ranked_a, ranked_b):
                self._keep(change)
        self.agreements.extend(added)
        return added

    def _keep(self, change: ScoreChange) -> None:
        if self.top == 0:
            return
        entry = (abs(change.delta), self._seen, change)
        self._seen += 1
        if len(self._largest) < self.top:
            heapq.heappush(self._largest, entry)
        elif entry[0] > self._largest[0][0]:
            heapq.heapreplace(self._largest, entry)

    def largest_changes(self) -> list[ScoreChange]:
        """Up to `top` score changes, largest |B - A| first."""
        return [change for _, _, change in sorted(self._largest, key=lambda e: (-e[0], e[1]))]

    def summary(self) -> ComparisonSummary:
        overlaps = [a.overlap for a in self.agreements]
        taus = [a.tau for a in self.agreements]
        return ComparisonSummary(
            compared=len(self.agreements), skipped=dict(self.skipped),
            mean_overlap=nan_stat(overlaps, np.mean), median_overlap=nan_stat(overlaps,
                                                                            np.median),
            mean_tau=nan_stat(taus, np.mean), median_tau=nan_stat(taus, np.median), k=self.k)


def run_compare(path: str, pipeline_a: RankingPipeline, pipeline_b: RankingPipeline,
                batch_size: int, *, k: int = DEFAULT_K, top: int = DEFAULT_TOP_CHANGES,
                requests_topic: str = "", progress: bool = True,
                on_agreement: Callable[[RequestAgreement], None] | None = None) -> Comparison:
    """Ranks each chunk of `path` with both pipelines and compares them request by request."""
    comparison = Comparison(k=k, top=top)
    with RecordReader(path) as reader, files.progress(path, "compare", progress) as bar:
        for chunk in chunked(to_inputs(files.tracked(reader, bar), requests_topic), batch_size):
            added = comparison.add(pipeline_a.process(pipeline_a.decode(chunk)).outcomes,
                                   pipeline_b.process(pipeline_b.decode(chunk)).outcomes)
            if on_agreement is not None:
                for item in added:
                    on_agreement(item)
    return comparison


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def command(args: argparse.Namespace, settings: Settings) -> None:
    """`replay compare`: prints one line per request (unless --summary-only), the summary and
    the largest score changes."""
    if len(args.checkpoint) != 2:
        raise ReplayError(f"compare needs --checkpoint exactly twice (A then B), got "
                          f"{len(args.checkpoint)}: {args.checkpoint}")
    path_a, path_b = args.checkpoint
    table_a: history.HistoryTable = {}
    table_b: history.HistoryTable = {}
    pipeline_a = replay_pipeline(settings, path_a, table_a, worker_id="replay-a")
    pipeline_b = replay_pipeline(settings, path_b, table_b, worker_id="replay-b")
    files.load_history_file(args.engagements, [(pipeline_a, table_a), (pipeline_b, table_b)],
                            settings)
    if not args.summary_only:
        print(f"{'request_id':<32} {'n':>5} {'top-' + str(args.k):>7} {'tau':>8}")

    def show(item: RequestAgreement) -> None:
        if not args.summary_only:
            print(f"{item.request_id:<32} {item.candidates:>5} {_fmt(item.overlap):>7} "
                  f"{_fmt(item.tau):>8}")

    comparison = run_compare(args.file, pipeline_a, pipeline_b, settings.max_batch_size,
                             k=args.k, top=args.top, requests_topic=settings.requests_topic,
                             progress=not args.no_progress, on_agreement=show)
    print(f"A {path_a} ({pipeline_a.runner.model_version})")
    print(f"B {path_b} ({pipeline_b.runner.model_version})")
    print("\n".join(comparison.summary().lines()))
    changes = comparison.largest_changes()
    if changes:
        print("largest score changes (request_id, post_id, score A -> B):")
        for c in changes:
            print(f"  {c.request_id}  {c.post_id}  {c.score_a:.6f} -> {c.score_b:.6f} "
                  f"({c.delta:+.6f})")
