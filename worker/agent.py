"""The ranking agent's batch step: Faust events in, outcomes published, inputs acked.

Knows Kafka (events, topics, acks) and the pipeline's interface, never tensor shapes. The
pipeline runs in an executor thread so the event loop (heartbeats, fetches) never blocks.
An input is acked only after the broker acknowledged its result or dead letter, so Faust
commits nothing that was not answered: at-least-once, duplicates keyed by request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import Executor
from typing import Any, Sequence

from aiokafka.errors import KafkaError

from worker.breaker import DeadLetterBreaker
from worker.metrics import WorkerMetrics
from worker.pipeline import InputRecord, Outcome, ProcessedBatch, RankingPipeline

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WorkerState:
    """What readiness and lag reporting need to know; mutated on the event loop only."""

    compiled: bool = False
    assigned: bool = False
    breaker: DeadLetterBreaker | None = None
    last_offsets: dict[Any, int] = dataclasses.field(default_factory=dict)  # tp -> offset

    def readiness(self) -> tuple[bool, str]:
        if not self.compiled:
            return False, "compiling the model"
        if not self.assigned:
            return False, "waiting for partition assignment"
        if self.breaker is not None and self.breaker.is_open:
            return False, f"circuit breaker open: {self.breaker.reason}"
        return True, "ready"


def to_record(event: Any) -> InputRecord:
    """A Faust event -> the pipeline's record (raw bytes; nothing decoded by Faust)."""
    message = event.message
    timestamp = message.timestamp
    return InputRecord(
        value=message.value, key=message.key, topic=message.topic,
        partition=message.partition, offset=message.offset,
        timestamp_ms=int(timestamp * 1000) if timestamp else None)


class BatchHandler:
    """Rank a batch, publish every outcome (retrying sends), then ack the inputs."""

    def __init__(self, pipeline: RankingPipeline, results_topic: Any, dead_letter_topic: Any,
                 metrics: WorkerMetrics, state: WorkerState, executor: Executor,
                 send_retry_delay_s: float = 1.0):
        self.pipeline = pipeline
        self.results_topic = results_topic
        self.dead_letter_topic = dead_letter_topic
        self.metrics = metrics
        self.state = state
        self.executor = executor
        self.send_retry_delay_s = send_retry_delay_s

    async def handle(self, stream: Any, events: Sequence[Any]) -> None:
        await self._wait_for_breaker()
        records = [to_record(e) for e in events]
        self.metrics.requests.inc(len(records))
        self.metrics.in_flight.inc(len(records))
        try:
            loop = asyncio.get_running_loop()
            processed = await loop.run_in_executor(self.executor, self.pipeline.process, records)
            await self._publish(processed.outcomes)
            for event in events:
                await stream.ack(event)
        finally:
            self.metrics.in_flight.dec(len(records))
        for record in records:
            self.state.last_offsets[(record.topic, record.partition)] = record.offset
        self._observe(processed)

    async def _wait_for_breaker(self) -> None:
        breaker = self.state.breaker
        while breaker is not None and breaker.seconds_until_retry() > 0:
            self.metrics.breaker_open.set(1)
            await asyncio.sleep(min(breaker.seconds_until_retry(), 1.0))

    def _topic_for(self, outcome: Outcome) -> Any:
        return self.results_topic if outcome.is_result else self.dead_letter_topic

    async def _publish(self, outcomes: Sequence[Outcome]) -> None:
        """Sends all outcomes and waits for the broker's acks. A failed send is retried,
        with a log line each time, until it succeeds: nothing is dropped silently."""
        pending = list(outcomes)
        attempt = 0
        while pending:
            attempt += 1
            futures = [await self._topic_for(o).send(key=o.key, value=o.value) for o in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [(o, r) for o, r in zip(pending, results) if isinstance(r, BaseException)]
            for _, error in failed:
                if not isinstance(error, (KafkaError, OSError, asyncio.TimeoutError)):
                    raise error
            if failed:
                log.warning("%d of %d sends failed (first: %r); retrying in %.1f s (attempt %d)",
                            len(failed), len(pending), failed[0][1], self.send_retry_delay_s,
                            attempt)
                await asyncio.sleep(self.send_retry_delay_s)
            pending = [o for o, _ in failed]

    def _observe(self, processed: ProcessedBatch) -> None:
        m, outcomes = self.metrics, processed.outcomes
        m.batch_size.observe(len(outcomes))
        m.model_time.observe(processed.times.model_ms / 1000)
        for stage, ms in processed.times._asdict().items():
            m.stage_time.labels(stage.removesuffix("_ms")).observe(ms / 1000)
        for outcome in outcomes:
            if outcome.is_result:
                m.results.inc()
            else:
                m.dead_letters.labels(outcome.dead_letter_code).inc()
            sent = outcome.record.timestamp_ms
            if sent:
                m.queue_wait.observe(max(0.0, processed.started_ms - sent) / 1000)
        m.compilations.set(self.pipeline.compile_count)
        breaker = self.state.breaker
        if breaker is not None and breaker.record(not o.is_result for o in outcomes):
            m.breaker_open.set(1)
            log.error("DEAD-LETTER CIRCUIT BREAKER OPEN: %s", breaker.reason)
        elif breaker is not None and not breaker.is_open:
            m.breaker_open.set(0)
