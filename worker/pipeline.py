"""Records in, encoded results and dead letters out: the worker's CPU work, without Kafka.

wire bytes -> validated request -> padded batch -> jitted model -> rankings -> result bytes.
Blocking; the agent runs it in executor threads so the event loop keeps heart-beating, and
replay and benchmarks call it directly. Two stages: `decode` (msgpack, validation, expiry) is
thread-safe and may run while another batch is in `process`, which is for one caller at a
time: `process(decode(records))`, so the agent decodes batch k+1 on one thread while batch k
is ranked on another.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np

from phoenix.config import ConfigError
from phoenix.model import RecsysBatch
from phoenix.params import dummy_batch
from phoenix.runner import RankingRunner, RankOutput
from worker import codec, wire
from worker.assembly import Assembler, Buckets, Ranking
from worker.cost_model import CostModel
from worker.errors import (PUBLISH_FAILED, TOO_LARGE, ExpiredError, ModelError,
                           ValidationError, WorkerError)
from worker.history import with_table_history
from worker.request import HISTORY_FROM_TABLE, RankingRequest
from worker.rollout import Canary, in_canary
from worker.validation import ValidationLimits, parse_requests

log = logging.getLogger(__name__)

# user id -> the user's stored history value (worker.history), None for an unknown user.
# Called from the decode thread: it must be safe to call there (the worker's reads a dict).
HistoryLookup = Callable[[int], "bytes | None"]


@dataclasses.dataclass(frozen=True)
class InputRecord:
    """One consumed Kafka record (or a replayed one)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None  # the record's timestamp (producer or broker clock)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to publish for one input record: a result or a dead letter, already encoded."""

    record: InputRecord
    key: bytes | None
    value: bytes
    request_id: str | None
    dead_letter_code: str | None = None  # None for a result
    model_version: str | None = None  # the model that ranked a result

    @property
    def is_result(self) -> bool:
        return self.dead_letter_code is None


class StageTimes(NamedTuple):
    """Where a batch's time went, in milliseconds (for metrics and profiling)."""

    decode_ms: float  # msgpack decode + validation
    assemble_ms: float  # hashing and padding, and mapping the outputs back to requests
    model_ms: float  # jitted calls, including host<->device copies
    encode_ms: float  # result dicts + msgpack


class ProcessedBatch(NamedTuple):
    outcomes: list[Outcome]  # one per input record, in input order
    times: StageTimes
    candidates: int  # real candidates ranked
    started_ms: float  # epoch ms when the batch formed (end of its queue wait)
    ranked: int = 0  # requests that reached the model


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedBatch:
    """Records after `RankingPipeline.decode`: each a validated request or its dead letter."""

    records: Sequence[InputRecord]
    items: list[RankingRequest | Outcome]  # one per record, in input order
    started_ms: float  # epoch ms when decoding began (the end of the batch's queue wait)
    decode_ms: float

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_requests(self) -> bool:
        """Whether anything in it is for the ranker (not only dead letters)."""
        return any(isinstance(item, RankingRequest) for item in self.items)


def publish_failed(outcome: Outcome, error: BaseException) -> Outcome:
    """The minimal dead letter that stands in for `outcome` when the producer or the broker
    refused it for good (not a transient error). It keeps only the first
    `codec.MINIMAL_ORIGINAL_BYTES` of the original, so it passes whatever refused the rest."""
    record = outcome.record
    what = "result" if outcome.is_result else f"{outcome.dead_letter_code} dead letter"
    value = codec.encode_dead_letter(
        record.value, topic=record.topic, partition=record.partition, offset=record.offset,
        code=PUBLISH_FAILED, request_id=outcome.request_id,
        keep_bytes=codec.MINIMAL_ORIGINAL_BYTES,
        message=(f"the worker's {what} for this record ({len(outcome.value)} bytes) could not "
                 f"be published: {type(error).__name__}: {error}; when it is a size limit, "
                 "raise max.message.bytes of the topic (or the broker's message.max.bytes) "
                 "to at least the worker's max_message_bytes plus 64 KiB"))
    return Outcome(record, record.key, value, outcome.request_id, PUBLISH_FAILED)


def _now_ms() -> float:
    return time.time() * 1000.0


class RankingPipeline:
    """Decode, validate, expire, assemble, rank (isolating poison requests), encode."""

    def __init__(self, runner: RankingRunner, assembler: Assembler, limits: ValidationLimits,
                 worker_id: str, max_age_ms: int | None = None, canary: Canary | None = None,
                 history: HistoryLookup | None = None):
        self.runner = runner
        self.history = history  # for v2 requests without history (None: empty history)
        self.canary = canary
        self.assembler = assembler
        self.limits = limits
        self.worker_id = worker_id
        self.max_age_ms = max_age_ms

    @classmethod
    def create(cls, runner: RankingRunner, buckets: Buckets, worker_id: str,
               max_age_ms: int | None = None, cache_budget_mb: float = math.inf,
               canary: Canary | None = None, history: HistoryLookup | None = None,
               **limit_overrides: int) -> "RankingPipeline":
        """`history`: where v2 requests without history read the user's stored one (None:
        an empty history). Raises ConfigError when the buckets leave allowed requests without
        a shape or their largest call is over `cache_budget_mb` of cached context, or when the
        canary model has another config (it shares the buckets)."""
        limits = ValidationLimits.from_config(runner.config, **limit_overrides)
        buckets.check(runner.config, limits.max_candidates, cache_budget_mb,
                      runner.dtype.itemsize)
        if canary is not None and canary.runner.config != runner.config:
            raise ConfigError("the canary checkpoint's model config differs from the main "
                              "checkpoint's; a canary must be the same model, retrained")
        return cls(runner, Assembler(runner.config, buckets), limits, worker_id, max_age_ms,
                   canary, history)

    def swap_runner(self, runner: RankingRunner) -> RankingRunner:
        """Serve `runner` (same config) from the next batch on; returns the one replaced.
        Call it on the thread that runs `process`, so that it falls between two batches."""
        old, self.runner = self.runner, runner
        return old

    def warmup(self, after_each: Callable[[], None] = lambda: None) -> None:
        """Compile every bucket shape (of both models, with a canary) before the worker takes
        traffic. `after_each` runs after each shape (start-up checks there for a stop)."""
        for runner in self.runners():
            for shape in self.assembler.buckets.shapes():
                runner.warmup([shape])
                after_each()

    def measure_cost(self) -> CostModel:
        """The serving model's time per compiled call shape (compile them first: `warmup`)."""
        runner = self.runner
        return CostModel.measure(self.assembler.buckets, lambda shape: runner.rank_cached(
            dummy_batch(runner.config, *shape)))

    def runners(self) -> list[RankingRunner]:
        """The models serving: the main one, then the canary if any."""
        return [self.runner] + ([self.canary.runner] if self.canary else [])

    def _by_model(self, requests: Sequence[RankingRequest]
                  ) -> list[tuple[RankingRunner, list[int]]]:
        """Which model ranks which requests (positions in `requests`): the canary takes its
        share of the users, the main model the rest."""
        if self.canary is None:
            return [(self.runner, list(range(len(requests))))]
        canary = in_canary(np.array([r.user_id for r in requests], np.uint64),
                           self.canary.share)
        groups = [(self.runner, np.flatnonzero(~canary).tolist()),
                  (self.canary.runner, np.flatnonzero(canary).tolist())]
        return [(runner, positions) for runner, positions in groups if positions]

    # -- the stages ------------------------------------------------------------------------

    @property
    def max_outcome_bytes(self) -> int:
        """The largest result or dead letter this pipeline builds: what the worker's producer
        accepts (`codec.publish_cap`) less room for the record's key and Kafka's headers."""
        return codec.publish_cap(self.limits.max_message_bytes) - codec.RECORD_OVERHEAD_BYTES

    def _dead_letter(self, record: InputRecord, error: WorkerError,
                     request_id: str | None = None) -> Outcome:
        request_id = request_id or getattr(error, "request_id", None)
        size = len(record.value) if record.value is not None else 0
        value = codec.dead_letter_from_error(
            error, record.value, topic=record.topic, partition=record.partition,
            offset=record.offset, request_id=request_id,
            keep_bytes=codec.original_keep_bytes(size, self.limits.max_message_bytes))
        outcome = Outcome(record, record.key, value, request_id, error.code)
        if len(value) > self.max_outcome_bytes:  # unreachable with the caps; kept as a guard
            return publish_failed(outcome, ValueError(
                f"the dead letter is {len(value)} bytes, over the producer cap of "
                f"{self.max_outcome_bytes}"))
        return outcome

    def dead_letter(self, record: InputRecord, error: WorkerError) -> Outcome:
        """The dead letter of `record` (also for inputs other than requests: engagements)."""
        return self._dead_letter(record, error)

    def shed(self, record: InputRecord, request: RankingRequest, finish_ms: float,
             now_ms: float) -> Outcome:
        """The `expired` dead letter of a request the scheduler refused: it was predicted to
        finish at `finish_ms`, after its deadline."""
        return self._dead_letter(record, ExpiredError(
            _shed_message(request.deadline_ms, finish_ms, now_ms), request.request_id))

    def _checked(self, record: InputRecord, parsed: RankingRequest | ValidationError,
                 now_ms: float) -> RankingRequest | Outcome:
        if isinstance(parsed, ValidationError):
            return self._dead_letter(record, parsed)
        request = parsed
        if request.history_source == HISTORY_FROM_TABLE:
            stored = self.history(request.user_id) if self.history is not None else None
            request = with_table_history(request, stored, self.limits.history_keep)
        expired = self._expiry(request, record, now_ms)
        return self._dead_letter(record, expired) if expired else request

    def _expiry(self, request: RankingRequest, record: InputRecord,
                now_ms: float) -> ExpiredError | None:
        sent = request.timestamp_ms or record.timestamp_ms
        if request.deadline_ms is not None and now_ms > request.deadline_ms:
            return ExpiredError(_deadline_message(request.deadline_ms, sent, now_ms),
                                request.request_id)
        if self.max_age_ms is not None and sent and now_ms - sent > self.max_age_ms:
            return ExpiredError(
                f"request is {now_ms - sent:.0f} ms old, over the worker's max age of "
                f"{self.max_age_ms} ms; it was dropped unranked", request.request_id)
        return None

    def _rank(self, requests: list[RankingRequest], runner: RankingRunner
              ) -> tuple[list[Ranking], float]:
        """(one ranking per request by `runner`, ms spent outside the model: assembling the
        calls and mapping their outputs back). `Assembler.rank` does the work."""
        model_ms = 0.0

        def timed_call(batch: RecsysBatch) -> RankOutput:
            nonlocal model_ms
            called = _now_ms()
            output = runner.rank_cached(batch)
            model_ms += _now_ms() - called
            return output

        start = _now_ms()
        rankings = self.assembler.rank(requests, timed_call)
        return rankings, _now_ms() - start - model_ms

    def _rank_isolating(self, requests: list[RankingRequest], runner: RankingRunner
                        ) -> tuple[list[Ranking | ModelError], float]:
        """Ranks; if the batch raises, halves it until the culprit stands alone. Returns the
        rankings (a ModelError for each culprit) and the ms spent assembling."""
        try:
            return self._rank(requests, runner)
        # Any failure inside numpy/JAX code is a model error for these requests; this is the
        # isolation boundary, so it must not let one bad request take the batch down.
        except Exception as exc:  # noqa: BLE001 (CancelledError is not an Exception)
            if len(requests) == 1:
                log.warning("request %s makes ranking fail: %r", requests[0].request_id, exc)
                return [ModelError(f"ranking this request raised {type(exc).__name__}: {exc}",
                                   requests[0].request_id)], 0.0
            half = len(requests) // 2
            (first, first_ms), (second, second_ms) = (
                self._rank_isolating(requests[:half], runner),
                self._rank_isolating(requests[half:], runner))
            return first + second, first_ms + second_ms

    def _result(self, ranking: Ranking, record: InputRecord, queue_wait_ms: float,
                model_ms: float, model_version: str) -> Outcome:
        request = ranking.request
        value = codec.encode_result(codec.build_result(
            request, ranking.order, ranking.scores, ranking.probabilities,
            model_version=model_version, worker_id=self.worker_id,
            timings={"queue_wait_ms": queue_wait_ms, "model_ms": model_ms},
            produced_at_ms=int(_now_ms())))
        if len(value) > self.max_outcome_bytes:
            return self._dead_letter(record, ValidationError(TOO_LARGE, (
                f"the result for this request is {len(value)} bytes, over the "
                f"{self.max_outcome_bytes}-byte cap of what the worker publishes; ask for fewer "
                "candidates back (top_k) or raise the worker's max_message_bytes"),
                request_id=request.request_id))
        return Outcome(record, codec.user_key(request.user_id), value, request.request_id,
                       model_version=model_version)

    # -- the whole batch -------------------------------------------------------------------

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        """Decodes, validates and expires each record. Thread-safe (reads nothing mutable),
        so it may run while another batch is in `process`. Never raises."""
        start = _now_ms()
        try:
            parsed = parse_requests([b"" if r.value is None else r.value for r in records],
                                    self.limits, wire.REQUEST_SCHEMAS)
            items = [self._checked(r, p, start) for r, p in zip(records, parsed)]
        except Exception as exc:  # noqa: BLE001 (the same last line of defence as `process`)
            items = self._batch_failed(records, exc)
        return DecodedBatch(records, items, start, _now_ms() - start)

    def process(self, decoded: DecodedBatch) -> ProcessedBatch:
        """One outcome per record of `decode`'s batch, in input order. Never raises: an
        unexpected error outside ranking (a bug, not bad input) dead-letters the whole batch
        with its message, so the agent never dies and no record is dropped."""
        try:
            return self._process(decoded)
        # The last line of defence of the agent: whatever went wrong, answer every record.
        except Exception as exc:  # noqa: BLE001 (CancelledError is not an Exception)
            return ProcessedBatch(self._batch_failed(decoded.records, exc),
                                  StageTimes(0.0, 0.0, 0.0, 0.0), 0, decoded.started_ms)

    def _batch_failed(self, records: Sequence[InputRecord], exc: Exception) -> list[Outcome]:
        log.exception("processing a batch of %d records failed", len(records))
        return [self._dead_letter(record, ModelError(
            f"the worker failed on this record's batch: {type(exc).__name__}: {exc}"))
            for record in records]

    def _process(self, decoded: DecodedBatch) -> ProcessedBatch:
        records, start = decoded.records, decoded.started_ms
        valid = [i for i, item in enumerate(decoded.items) if isinstance(item, RankingRequest)]
        ranking_start = _now_ms()  # later than start + decode_ms when decoded on another thread

        requests = [decoded.items[i] for i in valid]
        ranked: list[tuple[Ranking | ModelError, str]] = [None] * len(requests)
        assemble_ms = 0.0
        for runner, positions in self._by_model(requests) if requests else []:
            got, ms = self._rank_isolating([requests[p] for p in positions], runner)
            assemble_ms += ms
            for p, item in zip(positions, got):
                ranked[p] = (item, runner.model_version)
        after_model = _now_ms()
        model_ms = after_model - ranking_start - assemble_ms

        outcomes: list[Outcome | None] = [
            item if isinstance(item, Outcome) else None for item in decoded.items]
        for i, (item, version) in zip(valid, ranked):
            record = records[i]
            if isinstance(item, ModelError):
                outcomes[i] = self._dead_letter(record, item)
                continue
            sent = item.request.timestamp_ms or record.timestamp_ms or start
            outcomes[i] = self._result(item, record, max(0.0, start - sent), model_ms,
                                       version)
        end = _now_ms()
        times = StageTimes(decoded.decode_ms, assemble_ms, model_ms, end - after_model)
        return ProcessedBatch(outcomes, times, sum(r.num_candidates for r in requests), start,
                              len(requests))


def _deadline_message(deadline_ms: int, sent_ms: int | None, now_ms: float) -> str:
    """Why a deadline passed: a deadline already past when the request was sent is the
    producer's to fix; one that passed while the request queued is the worker's capacity."""
    if sent_ms and deadline_ms <= sent_ms:
        return (f"deadline_ms {deadline_ms} was already {sent_ms - deadline_ms} ms in the past "
                f"when the request was sent (at {sent_ms}); the producer set a deadline "
                "before the send time: send one after it (or check the producer's clock)")
    queued = f"; it waited {now_ms - sent_ms:.0f} ms in the queue" if sent_ms else ""
    return (f"deadline_ms {deadline_ms} passed {now_ms - deadline_ms:.0f} ms before its batch "
            f"formed{queued}; give it a later deadline, or add workers (and partitions) so "
            "requests queue less")


def _shed_message(deadline_ms: int, finish_ms: float, now_ms: float) -> str:
    """Why the scheduler refused a request before its deadline passed."""
    return (f"deadline_ms {deadline_ms} cannot be met: with the work queued ahead of it, this "
            f"request was predicted to finish at {finish_ms:.0f} ({finish_ms - deadline_ms:.0f} "
            f"ms after its deadline, {deadline_ms - now_ms:.0f} ms before it); it was refused "
            "unranked so that the requests served meet theirs. Give it a later deadline, or "
            "add workers (and partitions) so requests queue less")
