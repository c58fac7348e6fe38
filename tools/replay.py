"""Replay: rank recorded requests offline, copy topics to files and back, compare two models.

    python -m tools.replay offline FILE --out RESULTS [--checkpoint PATH] [--batch-size N]
                                   [--engagements ENGAGEMENTS]
    python -m tools.replay record TOPIC FILE [--bootstrap HOST:PORT] [--count N] [--timeout-s S]
    python -m tools.replay publish FILE [--topic T] [--rate R | --recorded-pace]
    python -m tools.replay compare FILE --checkpoint A --checkpoint B [--k 5] [--top 10]

FILE is a record file (`tools/recordfile.py`): the mock producer's `--out` or `replay record`.
`offline` and `compare` rank with `RankingPipeline`, the worker's own decode / validate /
assemble / rank / encode code, built from the worker's `Settings` (so `RANKER_*` variables and
any worker flag such as `--batch-buckets` or `--max-candidates` apply), in chunks of
`max_batch_size` records like the worker's batches. Differences from the live worker, on purpose:
  * the worker's `max_age_ms` is not applied (a recorded file is old by definition); a
    request's own `deadline_ms` still is, against the replay's clock;
  * records that never went through Kafka (partition/offset None) are given partition 0 and
    their index in the file as offset, so dead letters still name `topic[partition]@offset`.

`--engagements FILE` (offline, compare) first applies every engagement of a record file (the
producer's `--engagements-out`, or `replay record user-engagements FILE`) to a history table
as the worker's history agent does, so v2 requests without history rank as they would live
after those engagements; without it, such requests rank with an empty history.

`record` reads from the beginning with manual assignment (no consumer group, nothing
committed) and stops after `--count` records or `--timeout-s` without a new one: the embedded
tansu broker misreports end offsets, so "read to the end offset" cannot be trusted. `publish`
sends the value bytes untouched with their keys (so the default partitioner puts one user on
one partition), stamps them with the send time and waits for every ack.

Exit codes: 0 done, 1 Kafka failed, 2 bad input (a truncated or foreign record file, a bad
checkpoint or setting, a missing topic), with a one-line message.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import heapq
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
from tqdm import tqdm

from phoenix import compilations
from phoenix.checkpoint import CheckpointError
from phoenix.config import ConfigError
from worker import codec, history
from worker.engagement import parse_engagement
from worker.errors import ValidationError, WorkerError
from worker.pipeline import InputRecord, Outcome, RankingPipeline
from tools import kafka_io
from tools.kafka_io import KafkaIOError
from tools.pacing import Pace, PaceError
from tools.recordfile import Record, RecordFileError, RecordReader, RecordWriter
from worker.serving import build_pipeline as _build_pipeline
from worker.settings import Settings, SettingsError

T = TypeVar("T")

PROG = "python -m tools.replay"
REPLAY_WORKER_ID = "replay"


def build_pipeline(settings: Settings, checkpoint: str | None = None,
                   worker_id: str = REPLAY_WORKER_ID) -> RankingPipeline:
    """The worker's own pipeline, without max age: a recording is old by nature."""
    return _build_pipeline(settings, checkpoint, worker_id, apply_max_age=False)
DEFAULT_K = 5
DEFAULT_TOP_CHANGES = 10
DEFAULT_IDLE_TIMEOUT_S = 5.0
DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # the producer's too_large events are just over 1 MiB

EXIT_OK, EXIT_KAFKA, EXIT_USAGE = 0, 1, 2


class ReplayError(WorkerError):
    """Input replay cannot use (a missing topic, a bad argument); exit code 2."""


# =============================================================================================
# Pure parts: no Kafka, no printing. Unit-tested directly.
# =============================================================================================


class HistoryLoad(NamedTuple):
    applied: int  # engagements now in the table
    ignored: int  # duplicates, or older than a full history keeps
    invalid: int  # would be dead-lettered by the worker; skipped here

    def line(self) -> str:
        return (f"engagements: {self.applied} applied, {self.ignored} ignored (duplicate or "
                f"too old), {self.invalid} invalid (skipped)")


def load_history(records: Iterable[Record], pipeline: RankingPipeline,
                 cap: int) -> HistoryLoad:
    """Applies every engagement of `records`, in file order, to a fresh history table, as the
    worker's history agent does, and has `pipeline` rank v2 requests without history with it."""
    table: history.HistoryTable = {}
    counts = collections.Counter()
    for record in records:
        try:
            engagement = parse_engagement(record.value, pipeline.limits)
        except ValidationError:
            counts["invalid"] += 1
            continue
        counts["applied" if history.apply(table, engagement, cap) else "ignored"] += 1
    pipeline.history = history.lookup(table)
    return HistoryLoad(counts["applied"], counts["ignored"], counts["invalid"])


def _load_history_file(path: str | None, pipelines: Sequence[RankingPipeline],
                       settings: Settings) -> None:
    if path is None:
        return
    for pipeline in pipelines:
        with RecordReader(path) as reader:
            loaded = load_history(reader, pipeline, settings.history_cap)
    print(f"{path}: {loaded.line()}")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); streams its input."""
    if size < 1:
        raise ReplayError(f"batch size must be >= 1, got {size}")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def to_input(record: Record, index: int, default_topic: str) -> InputRecord:
    """The pipeline's view of a file record. Never-consumed records get partition 0, offset =
    their index in the file (the dead-letter schema wants non-negative ints)."""
    return InputRecord(
        value=record.value, key=record.key, topic=record.topic or default_topic,
        partition=record.partition if record.partition is not None else 0,
        offset=record.offset if record.offset is not None else index,
        timestamp_ms=record.timestamp_ms or None)


def to_inputs(records: Iterable[Record], default_topic: str) -> Iterator[InputRecord]:
    for index, record in enumerate(records):
        yield to_input(record, index, default_topic)


def iter_outcome_batches(records: Iterable[Record], pipeline: RankingPipeline, batch_size: int,
                         default_topic: str = "") -> Iterator[list[Outcome]]:
    """Ranks `records` in chunks of `batch_size`, as the worker batches them; one list of
    outcomes per chunk, in input order. Streams: holds one chunk at a time."""
    for chunk in chunked(to_inputs(records, default_topic), batch_size):
        yield pipeline.process(pipeline.decode(chunk)).outcomes


def rank_records(records: Iterable[Record], pipeline: RankingPipeline, batch_size: int,
                 default_topic: str = "") -> list[Outcome]:
    """Every record's outcome (result or dead letter), in input order: one per record."""
    return [outcome for batch in iter_outcome_batches(records, pipeline, batch_size,
                                                      default_topic)
            for outcome in batch]


def outcome_record(outcome: Outcome, results_topic: str, dead_letter_topic: str,
                   timestamp_ms: int) -> Record:
    """The file record of one outcome, as the worker would publish it (never went to Kafka)."""
    topic = results_topic if outcome.is_result else dead_letter_topic
    return Record(value=outcome.value, key=outcome.key, timestamp_ms=timestamp_ms, topic=topic)


@dataclasses.dataclass(frozen=True)
class OfflineSummary:
    requests: int  # records read
    results: int  # ranked
    dead_letters: Mapping[str, int]  # dead-letter code -> count (codes seen only)
    seconds: float  # wall time of reading, ranking and writing
    model_version: str
    compilations: int  # XLA compilations in the process during the run
    by_version: Mapping[str, int] = dataclasses.field(default_factory=dict)  # results per model

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    def lines(self) -> list[str]:
        letters = ", ".join(f"{code} {n}" for code, n in sorted(self.dead_letters.items()))
        return [
            f"requests      {self.requests}",
            f"results       {self.results}",
            f"dead letters  {sum(self.dead_letters.values())}" + (f" ({letters})" if letters
                                                                  else ""),
            f"requests/s    {self.requests_per_s:.1f} ({self.seconds:.2f} s, "
            f"{self.compilations} compilations)",
            f"model         {self.model_version}" + (
                " (results by model: " + ", ".join(f"{v} {n}" for v, n in sorted(
                    self.by_version.items())) + ")" if len(self.by_version) > 1 else ""),
        ]


def summarize(codes: Iterable[str | None], seconds: float, model_version: str,
              compilations: int = 0, versions: Iterable[str | None] = ()) -> OfflineSummary:
    """Summary from each outcome's dead-letter code (None for a result) and, optionally,
    each outcome's model version (None for a dead letter)."""
    counts = collections.Counter(codes)
    results = counts.pop(None, 0)
    by_version = collections.Counter(v for v in versions if v is not None)
    return OfflineSummary(requests=results + sum(counts.values()), results=results,
                          dead_letters=dict(counts), seconds=seconds,
                          model_version=model_version, compilations=compilations,
                          by_version=dict(by_version))


# -- comparing two models ---------------------------------------------------------------------


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


def _positions(order: np.ndarray, items: np.ndarray) -> np.ndarray:
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
    where_b = _positions(b, in_b)  # [n] their positions in B
    signs = np.sign(where_b[None, :] - where_b[:, None])  # [n, n] +1 where B agrees with A
    return float(np.triu(signs, 1).sum() / (n * (n - 1) / 2))


def top_k_overlap(order_a: np.ndarray, order_b: np.ndarray, k: int) -> float:
    """|top-k of A ∩ top-k of B| / k', k' = min(k, len A, len B); NaN when either is empty."""
    kk = min(k, len(order_a), len(order_b))
    if kk == 0:
        return math.nan
    return len(np.intersect1d(order_a[:kk], order_b[:kk])) / kk


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
    score_a = a.scores[_positions(a.post_ids, common)]
    score_b = b.scores[_positions(b.post_ids, common)]
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


def _nan_stat(values: Sequence[float], stat: Callable[[np.ndarray], Any]) -> float:
    array = np.asarray(values, np.float64)
    array = array[~np.isnan(array)]
    return float(stat(array)) if array.size else math.nan


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
            mean_overlap=_nan_stat(overlaps, np.mean), median_overlap=_nan_stat(overlaps,
                                                                              np.median),
            mean_tau=_nan_stat(taus, np.mean), median_tau=_nan_stat(taus, np.median), k=self.k)


# -- publishing pace ------------------------------------------------------------------------


# =============================================================================================
# Building the pipeline from the worker's settings
# =============================================================================================


# =============================================================================================
# File runs (offline, compare): stream the file, rank, write/print. No Kafka.
# =============================================================================================


def _progress(path: str, desc: str, enabled: bool) -> tqdm:
    """A byte-based bar over the input file (records vary in size; bytes are known upfront)."""
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc,
                disable=None if enabled else True, file=sys.stderr, leave=False)


def _tracked(reader: RecordReader, bar: tqdm) -> Iterator[Record]:
    for record in reader:
        if reader.bytes_read > bar.n:
            bar.update(reader.bytes_read - bar.n)
        yield record


def run_offline(path: str, out_path: str, pipeline: RankingPipeline, batch_size: int, *,
                results_topic: str, dead_letter_topic: str, requests_topic: str = "",
                progress: bool = True) -> OfflineSummary:
    """Ranks every record of `path`, writes every outcome to `out_path`, returns the summary.

    The output appears only when complete (written beside it, then renamed): a damaged input
    raises its `RecordFileError` and leaves no partial results file behind.
    """
    if os.path.abspath(path) == os.path.abspath(out_path):
        raise ReplayError(f"--out {out_path} is the input file; write the results elsewhere")
    partial = out_path + ".partial"
    codes: list[str | None] = []
    versions: list[str | None] = []
    compiled_before = compilations.count()
    start = time.perf_counter()
    try:
        with RecordReader(path) as reader, RecordWriter(partial) as out, \
                _progress(path, "offline", progress) as bar:
            for outcomes in iter_outcome_batches(_tracked(reader, bar), pipeline, batch_size,
                                                 requests_topic):
                now = time.time_ns() // 1_000_000
                for outcome in outcomes:
                    out.write(outcome_record(outcome, results_topic, dead_letter_topic, now))
                    codes.append(outcome.dead_letter_code)
                    versions.append(outcome.model_version)
        os.replace(partial, out_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return summarize(codes, time.perf_counter() - start, pipeline.runner.model_version,
                     compilations.count() - compiled_before, versions)


def run_compare(path: str, pipeline_a: RankingPipeline, pipeline_b: RankingPipeline,
                batch_size: int, *, k: int = DEFAULT_K, top: int = DEFAULT_TOP_CHANGES,
                requests_topic: str = "", progress: bool = True,
                on_agreement: Callable[[RequestAgreement], None] | None = None) -> Comparison:
    """Ranks each chunk of `path` with both pipelines and compares them request by request."""
    comparison = Comparison(k=k, top=top)
    with RecordReader(path) as reader, _progress(path, "compare", progress) as bar:
        for chunk in chunked(to_inputs(_tracked(reader, bar), requests_topic), batch_size):
            added = comparison.add(pipeline_a.process(pipeline_a.decode(chunk)).outcomes,
                                   pipeline_b.process(pipeline_b.decode(chunk)).outcomes)
            if on_agreement is not None:
                for item in added:
                    on_agreement(item)
    return comparison


# =============================================================================================
# Kafka I/O (record, publish): aiokafka clients, always closed in async with / finally.
# =============================================================================================


def record_from_message(message: Any) -> Record:
    """A consumed aiokafka ConsumerRecord as a file record (a null value becomes b"")."""
    return Record(value=message.value if message.value is not None else b"", key=message.key,
                  timestamp_ms=message.timestamp, topic=message.topic,
                  partition=message.partition, offset=message.offset)


async def record_topic(topic: str, path: str, connection: Mapping[str, Any], *,
                       count: int | None = None, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                       progress: bool = True) -> int:
    """Copies `topic` from its first offsets into the record file `path`; returns the count.

    Stops after `count` records or once no record arrived for `idle_timeout_s`. Per-partition
    order is kept (partitions interleave in fetch order). Nothing is committed: there is no
    consumer group, so recording never moves a deployment's offsets.
    """
    await kafka_io.topic_partitions(connection, topic)  # refuse a missing topic by name
    with RecordWriter(path) as out, tqdm(total=count, unit="msg", desc=f"record {topic}",
                                         disable=None if progress else True,
                                         file=sys.stderr, leave=False) as bar:
        async for messages, _ in kafka_io.read_from_start(
                connection, [topic], count=count, idle_timeout_s=idle_timeout_s):
            for message in messages:
                out.write(record_from_message(message))
            bar.update(len(messages))
        return out.count


async def publish_records(records: Iterable[Record], topic: str,
                          connection: Mapping[str, Any], *, pace: Pace | None = None,
                          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> int:
    """Sends each record's value and key to `topic` (acks=all), paced; returns the count once
    every send is acknowledged. Raises aiokafka's KafkaError on a failed delivery."""
    from aiokafka import AIOKafkaProducer

    def encode(record: Record) -> kafka_io.Outgoing:
        # Timestamp left to the producer (send time): the recorded one would make the
        # worker's max age expire every replayed request.
        return kafka_io.Outgoing(record.value, record.key)

    async with AIOKafkaProducer(**connection, acks="all", linger_ms=5,
                                max_request_size=max_request_bytes) as producer:
        return await kafka_io.send_paced(producer, topic, records, encode, pace=pace,
                                         recorded_ms=lambda r: r.timestamp_ms)


async def publish_file(path: str, topic: str, connection: Mapping[str, Any], *,
                       pace: Pace | None = None,
                       max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                       progress: bool = True) -> int:
    await kafka_io.topic_partitions(connection, topic)  # refuse before tansu auto-creates it
    with RecordReader(path) as reader, _progress(path, f"publish {topic}", progress) as bar:
        return await publish_records(_tracked(reader, bar), topic, connection, pace=pace,
                                     max_request_bytes=max_request_bytes)


# =============================================================================================
# CLI
# =============================================================================================


def _settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} ... [worker settings]", add_help=False)
    Settings.add_arguments(parser)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="offline, compare, record and publish also take any worker setting flag "
               "(e.g. --batch-buckets 1,8,64, --max-candidates, --broker) and RANKER_* variables.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    offline = commands.add_parser("offline", parents=[common],
                                  help="rank a record file without Kafka")
    offline.add_argument("file", help="record file of requests")
    offline.add_argument("--out", required=True, help="record file for results and dead letters")
    offline.add_argument("--checkpoint", help="model checkpoint (default: the worker's setting)")
    offline.add_argument("--engagements", metavar="FILE", help="record file of engagements "
                         "applied to the history table first (for v2 requests without history)")
    offline.add_argument("--batch-size", type=int, help="records per batch (default: the "
                         "worker's max_batch_size)")

    record = commands.add_parser("record", parents=[common],
                                 help="copy a topic's messages into a record file")
    record.add_argument("topic")
    record.add_argument("file", help="record file to write")
    record.add_argument("--bootstrap", help="host:port[,...] (default: the worker's broker)")
    record.add_argument("--count", type=int, help="stop after this many messages")
    record.add_argument("--timeout-s", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help=f"stop after this long without a message "
                             f"(default {DEFAULT_IDLE_TIMEOUT_S})")

    publish = commands.add_parser("publish", parents=[common],
                                  help="send a record file's messages to a topic")
    publish.add_argument("file", help="record file to send")
    publish.add_argument("--topic", help="default: the worker's requests topic")
    publish.add_argument("--bootstrap", help="host:port[,...] (default: the worker's broker)")
    pacing = publish.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=float, default=0.0,
                        help="messages per second (default 0: as fast as acks allow)")
    pacing.add_argument("--recorded-pace", action="store_true",
                        help="keep the gaps between the records' timestamps")
    publish.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                         help=f"largest producer request (default {DEFAULT_MAX_REQUEST_BYTES})")

    compare = commands.add_parser("compare", parents=[common],
                                  help="rank a file with two checkpoints, compare")
    compare.add_argument("file", help="record file of requests")
    compare.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                         help="give exactly twice: model A, then model B")
    compare.add_argument("--k", type=int, default=DEFAULT_K,
                         help=f"top-k for the overlap (default {DEFAULT_K})")
    compare.add_argument("--top", type=int, default=DEFAULT_TOP_CHANGES,
                         help=f"largest score changes shown (default {DEFAULT_TOP_CHANGES})")
    compare.add_argument("--engagements", metavar="FILE", help="record file of engagements "
                         "applied to the history table first (for v2 requests without history)")
    compare.add_argument("--batch-size", type=int, help="records per batch (default: the "
                         "worker's max_batch_size)")
    compare.add_argument("--summary-only", action="store_true",
                         help="print the summary, not one line per request")
    return parser


def _settings(rest: Sequence[str], environ: Mapping[str, str] | None,
              batch_size: int | None = None) -> Settings:
    _settings_parser().parse_args(list(rest))  # unknown flags: usage error, exit 2
    overrides = {"max_batch_size": batch_size} if batch_size is not None else {}
    return Settings.load(rest, environ, **overrides)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _cmd_offline(args: argparse.Namespace, settings: Settings) -> int:
    pipeline = build_pipeline(settings, args.checkpoint)
    _load_history_file(args.engagements, [pipeline], settings)
    summary = run_offline(args.file, args.out, pipeline, settings.max_batch_size,
                          results_topic=settings.results_topic,
                          dead_letter_topic=settings.dead_letter_topic,
                          requests_topic=settings.requests_topic,
                          progress=not args.no_progress)
    print(f"{args.file} -> {args.out}")
    print("\n".join(summary.lines()))
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    if len(args.checkpoint) != 2:
        raise ReplayError(f"compare needs --checkpoint exactly twice (A then B), got "
                          f"{len(args.checkpoint)}: {args.checkpoint}")
    path_a, path_b = args.checkpoint
    pipeline_a = build_pipeline(settings, path_a, worker_id="replay-a")
    pipeline_b = build_pipeline(settings, path_b, worker_id="replay-b")
    _load_history_file(args.engagements, [pipeline_a, pipeline_b], settings)
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
    return EXIT_OK


def _cmd_record(args: argparse.Namespace, settings: Settings) -> int:
    if args.timeout_s <= 0:
        raise ReplayError(f"--timeout-s must be > 0, got {args.timeout_s}")
    connection = kafka_io.connection(args.bootstrap, settings)
    count = asyncio.run(record_topic(args.topic, args.file, connection, count=args.count,
                                     idle_timeout_s=args.timeout_s,
                                     progress=not args.no_progress))
    print(f"recorded {count} messages from {args.topic} on {connection['bootstrap_servers']} "
          f"to {args.file}")
    return EXIT_OK


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    connection = kafka_io.connection(args.bootstrap, settings)
    topic = args.topic or settings.requests_topic
    pace = Pace(rate=args.rate, recorded=args.recorded_pace)
    start = time.perf_counter()
    sent = asyncio.run(publish_file(args.file, topic, connection, pace=pace,
                                    max_request_bytes=args.max_request_bytes,
                                    progress=not args.no_progress))
    seconds = time.perf_counter() - start
    print(f"published {sent} messages from {args.file} to {topic} on "
          f"{connection['bootstrap_servers']} in {seconds:.2f} s "
          f"({sent / seconds if seconds > 0 else 0:.1f}/s), all acknowledged")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "offline": _cmd_offline, "compare": _cmd_compare,
    "record": _cmd_record, "publish": _cmd_publish,
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    from aiokafka.errors import KafkaError  # imported lazily by the Kafka parts too

    args, rest = _parser().parse_known_args(argv)
    try:
        settings = _settings(rest, environ, getattr(args, "batch_size", None))
        return _COMMANDS[args.command](args, settings)
    except (RecordFileError, ReplayError, KafkaIOError, PaceError, CheckpointError,
            ConfigError, SettingsError,
            FileNotFoundError, IsADirectoryError, PermissionError) as error:
        print(f"replay {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaError as error:
        print(f"replay {args.command}: Kafka error: {_one_line(error)}", file=sys.stderr)
        return EXIT_KAFKA


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
