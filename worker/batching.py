"""The deadline policy's two loops around `DeadlineScheduler`: intake and dispatch.

Intake (the agent's loop) takes what Faust has fetched (every `max_batch_wait_ms`, or as soon
as `max_batch_size` records wait: fewer, larger takes cost less CPU per record), decodes
it on the decode thread and queues each record: a request to rank, a dead letter from decoding,
or a request shed on arrival because it cannot meet its deadline (these two leave with the next
batch, without model time). It holds the stream while `queue_limit` records wait, so the rest
wait in Kafka.

Dispatch (one task) hands the scheduler's next batch to `BatchHandler.dispatch` as soon as the
ranker is free, then folds the batch's measured time into the cost model. Being the only
caller of `dispatch`, it keeps the order in which items left the queue: each lane's order (the
key's under at-least-once, the partition's under exactly-once, whose transactions commit each
partition's offsets in order).

Knows Faust events and the scheduler, never tensor shapes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Hashable, Sequence

from worker.cost_model import CostModel, Prediction
from worker.handler import BatchHandler
from worker.monitoring import WorkerMetrics
from worker.pipeline import DecodedBatch, InputRecord, Outcome, ProcessedBatch
from worker.request import RankingRequest
from worker.scheduler import Batch, DeadlineScheduler, Pending

# Batches still being published when the next one is handed to the ranker: the ranker must
# not wait for the publishing of the batch before last (one is ranked at a time anyway).
PUBLISHING_AHEAD = 3

Lane = Callable[[InputRecord], Hashable]


def key_lane(record: InputRecord) -> Hashable:
    """At-least-once: requests of one key (one user) are answered in order."""
    return record.key


def partition_lane(record: InputRecord) -> Hashable:
    """Exactly-once: each partition in order (a transaction commits a partition's offsets
    only up to its first unanswered record, so an answer ahead of it would be repeated)."""
    return record.topic, record.partition


def _now_ms() -> float:
    return time.time() * 1000.0


class FixedBatches:
    """The fixed policy: each take of up to max_batch_size records (or what came within
    max_batch_wait_ms) is one batch, first come first served."""

    def __init__(self, handler: BatchHandler, wait_s: float):
        self.handler = handler
        self.wait_s = wait_s

    async def take(self, stream: Any, events: Sequence[Any]) -> None:
        await self.handler.handle(stream, events)  # returns while the batch is ranked

    async def run(self) -> None:
        """Nothing to dispatch apart from the takes."""

    async def flush(self) -> None:
        await self.handler.flush()


class ScheduledBatches:
    """Intake and dispatch of one ranking agent (see the module doc)."""

    def __init__(self, handler: BatchHandler, scheduler: DeadlineScheduler, lane: Lane,
                 metrics: WorkerMetrics, queue_limit: int, wait_s: float):
        self.handler = handler
        self.pipeline = handler.pipeline
        self.scheduler = scheduler
        self.cost: CostModel = scheduler.cost
        self.lane = lane
        self.metrics = metrics
        self.queue_limit = queue_limit
        self.wait_s = wait_s  # Faust's take() timer: the longest a fetched record waits
        self._wake = asyncio.Event()  # something to dispatch, or the ranker is free
        self._room = asyncio.Event()  # the queue went below its limit
        self._free_at_ms = 0.0  # when the batch being ranked is predicted to end
        self._stream: Any = None

    # -- intake ------------------------------------------------------------------------------

    async def take(self, stream: Any, events: Sequence[Any]) -> None:
        """Decodes `events` and queues or answers each; returns once the queue has room."""
        self._stream = stream
        decoded = await self.handler.decode(events)
        now = _now_ms()
        busy_ms = max(0.0, self._free_at_ms - now)
        for event, record, item in zip(events, decoded.records, decoded.items):
            self._admit(event, record, item, now, busy_ms)
        self._wake.set()
        while len(self.scheduler) >= self.queue_limit:
            self._room.clear()
            await self._room.wait()

    def _admit(self, event: Any, record: InputRecord, item: RankingRequest | Outcome,
               now: float, busy_ms: float) -> None:
        lane = self.lane(record)
        if isinstance(item, Outcome):  # a dead letter already
            self.scheduler.add(Pending(lane, None, now, None, (event, record, item)), now)
            return
        sent = min(now, item.timestamp_ms or record.timestamp_ms or now)
        self.scheduler.add(Pending(lane, self.cost.width(item.num_candidates), sent,
                                   item.deadline_ms, (event, record, item)), now, busy_ms)

    # -- dispatch ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatches a batch whenever the ranker is free and something is queued, until
        cancelled. A failure (a bug) goes to the handler's `on_bug`, which stops the worker."""
        try:
            await self._run()
        except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
            self.handler.on_bug(error)
            raise

    async def _run(self) -> None:
        ranking: asyncio.Future | None = None
        while True:
            if ranking is None and len(self.scheduler):
                await self.handler.wait_for_breaker()
                # Stopping or rebalancing: Faust waits until every record taken is acked.
                drain = not self.handler.flow_active()
                ranking = await self._dispatch(self.scheduler.next_batch(_now_ms(), drain))
                self._room.set()
                if ranking is None:
                    continue  # nothing in it to rank: look at the queue again
            waits = [asyncio.ensure_future(self._wake.wait())]
            if ranking is not None:
                waits.append(ranking)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            waits[0].cancel()
            self._wake.clear()
            if ranking is not None and ranking.done():
                ranking = None

    async def flush(self) -> None:
        """The stream ended (the worker stops): waits for the batches dispatched; what is
        still queued stays unacked, so it is delivered again after the stop."""
        await self.handler.flush()

    async def _dispatch(self, batch: Batch) -> asyncio.Future | None:
        """Hands `batch` to the handler; returns the future of its ranking (None when it
        has nothing to rank), which observes the prediction when done."""
        if not batch.items:
            return None
        now = _now_ms()
        events, records, items = [], [], []
        for pending in batch.items:
            event, record, item = pending.payload
            if pending.shed_at_ms is not None:
                item = self.pipeline.shed(record, item, pending.shed_at_ms, now)
                self.metrics.shed.inc()
            events.append(event)
            records.append(record)
            items.append(item)
        decoded = DecodedBatch(records, items, now, 0.0)
        to_rank = batch.to_rank
        prediction = self.cost.predict(p.width for p in to_rank) if to_rank else None
        if prediction is not None:
            self._free_at_ms = now + prediction.ms
        dispatched = await self.handler.dispatch(self._stream, events, decoded,
                                                 ahead=PUBLISHING_AHEAD)
        # Every batch says how long answers take to be out after a run, dead letters only
        # too: were it learnt from ranked batches only, a worker shedding everything could
        # never learn that publishing got faster again.
        ends_ms = now + (prediction.ms if prediction is not None else 0.0)
        dispatched.published.add_done_callback(lambda done: self._observe_after(ends_ms, done))
        if prediction is None:
            return None
        dispatched.ranking.add_done_callback(lambda done: self._observe(prediction, done))
        return dispatched.ranking

    def _observe_after(self, predicted_end_ms: float, done: asyncio.Future) -> None:
        """How long after the predicted end of its run a batch's answers were out."""
        if done.cancelled() or done.exception() is not None:
            return
        self.cost.observe_after(_now_ms() - predicted_end_ms,
                                most_ms=self.scheduler.latency_target_ms)

    def _observe(self, prediction: Prediction, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        processed: ProcessedBatch = done.result()
        self.scheduler.ranked(_now_ms())
        times = processed.times
        self.cost.observe(prediction, times.model_ms, times.assemble_ms + times.encode_ms)
        actual_s = (times.model_ms + times.assemble_ms + times.encode_ms) / 1000
        self.metrics.batch_time.labels("predicted").observe(prediction.ms / 1000)
        self.metrics.batch_time.labels("actual").observe(actual_s)
        self._wake.set()
