"""The ranking agent's batch step: Faust events in, outcomes published, inputs acked.

Knows Kafka (events, topics, acks) and the pipeline's interface, never tensor shapes. The
pipeline runs in an executor thread so the event loop (heartbeats, fetches) never blocks.
An input is acked only after the broker acknowledged its result or dead letter, so Faust
commits nothing that was not answered: at-least-once, duplicates keyed by request id.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from concurrent.futures import Executor
from typing import Any, Callable, NamedTuple, Sequence

from aiokafka.errors import (ClusterAuthorizationFailedError, KafkaConnectionError, KafkaError,
                             KafkaTimeoutError, OutOfOrderSequenceNumber, ProducerClosed,
                             TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed)

from phoenix import compilations
from worker.breaker import DeadLetterBreaker
from worker.exactly_once import commit_guard, transactional_id
from worker.monitoring import WorkerMetrics
from worker.errors import EXPIRED, PUBLISH_FAILED
from worker.settings import SettingsError
from worker.pipeline import (DecodedBatch, InputRecord, Outcome, ProcessedBatch,
                             RankingPipeline, publish_failed)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WorkerState:
    """What readiness and lag reporting need to know; mutated on the event loop only."""

    compiled: bool = False
    # Why start-up still waits for the broker (unreachable, or refusing this client so far).
    broker_wait: str | None = None
    assigned: bool = False
    breaker: DeadLetterBreaker | None = None
    last_offsets: dict[Any, int] = dataclasses.field(default_factory=dict)  # tp -> offset
    failed: BaseException | None = None  # the agent's bug, when it stopped the worker
    # True while Faust rebuilds the history table from its changelog after an assignment
    # (requests of those partitions are held until it is done).
    recovering: Callable[[], bool] = lambda: False
    # True from a rebalance until Faust resumes the stream partitions (it does so after the
    # table is rebuilt and the partitions are sought): a stop in between interrupts Faust.
    resuming: Callable[[], bool] = lambda: False
    # Why the worker cannot reach the cluster as it should (None: it can): silent leaders.
    degraded: Callable[[], str | None] = lambda: None
    # Why the broker refuses the worker's sends (an ACL taken away while serving); None: it
    # does not. Outcomes are held unanswered and their inputs unacked until it stops.
    refused: str | None = None

    def readiness(self) -> tuple[bool, str]:
        if not self.compiled:
            return False, "compiling the model"
        if self.broker_wait is not None:
            return False, f"waiting for the broker: {self.broker_wait}"
        if not self.assigned:
            return False, "waiting for partition assignment"
        if self.recovering():
            return False, "rebuilding the history table from its changelog"
        if self.resuming():
            return False, "rebalancing: waiting for the stream partitions to resume"
        if self.breaker is not None and self.breaker.is_open:
            return False, f"circuit breaker open: {self.breaker.reason}"
        degraded = self.degraded()
        if degraded is not None:
            return False, f"degraded: {degraded}"
        if self.refused is not None:
            return False, f"refused: {self.refused}"
        return True, "ready"


def is_transient(error: BaseException) -> bool:
    """Whether a failed send may succeed if retried unchanged: Kafka's retriable errors, a
    connection or a timeout (the broker away), the producer stopping (the stop redelivers)."""
    if isinstance(error, (KafkaConnectionError, KafkaTimeoutError, ProducerClosed, OSError,
                          asyncio.TimeoutError)):
        return True
    return isinstance(error, KafkaError) and bool(error.retriable)


def is_refused(error: BaseException) -> bool:
    """Whether the broker refused a send for a missing ACL: no use sending anything else in
    its place (the dead-letter topic may be refused too, and the request would be lost to its
    caller), but it may succeed unchanged once the ACL is granted again."""
    return isinstance(error, (TopicAuthorizationFailedError, ClusterAuthorizationFailedError,
                              TransactionalIdAuthorizationFailed))


def breaks_sequences(error: BaseException) -> bool:
    """Whether the idempotent producer must start its sequences again before a retry can
    succeed (`IdempotentProducer.reset_producer_id`): after a refused batch, and the
    out-of-order sequence that follows one."""
    return is_refused(error) or isinstance(error, OutOfOrderSequenceNumber)


def _where(outcome: Outcome) -> str:
    record = outcome.record
    return f"{record.topic}[{record.partition}]@{record.offset}"


def to_record(event: Any) -> InputRecord:
    """A Faust event -> the pipeline's record (raw bytes; nothing decoded by Faust)."""
    message = event.message
    timestamp = message.timestamp
    return InputRecord(
        value=message.value, key=message.key, topic=message.topic,
        partition=message.partition, offset=message.offset,
        timestamp_ms=int(timestamp * 1000) if timestamp else None)


class Dispatched(NamedTuple):
    """A dispatched batch: its ranking (done when the ranker is free again) and its
    publishing (done once every outcome is acknowledged and every input acked)."""

    ranking: asyncio.Future  # -> ProcessedBatch
    published: asyncio.Future


class BatchHandler:
    """Rank a batch, publish every outcome (retrying sends), then ack the inputs."""

    def __init__(self, pipeline: RankingPipeline, results_topic: Any, dead_letter_topic: Any,
                 metrics: WorkerMetrics, state: WorkerState, executor: Executor,
                 send_retry_delay_s: float = 1.0,
                 flow_active: Callable[[], bool] = lambda: True,
                 decode_executor: Executor | None = None,
                 on_bug: Callable[[BaseException], None] = lambda error: None):
        self.pipeline = pipeline
        self.flow_active = flow_active  # False while Faust stops or gives partitions up
        self.results_topic = results_topic
        self.dead_letter_topic = dead_letter_topic
        self.metrics = metrics
        self.state = state
        self.executor = executor  # ranks (one thread: batches are ranked in handling order)
        self.decode_executor = decode_executor  # None: decoded on `executor` too
        self.send_retry_delay_s = send_retry_delay_s
        # Called as soon as a batch fails unexpectedly (a bug: input and broker trouble never
        # raise), before any later batch could be acked past it.
        self.on_bug = on_bug
        # Batches handled but not yet published and acked, oldest first. Each task waits for
        # the one before it, so results go out in handling order.
        self._in_flight: collections.deque[asyncio.Future] = collections.deque()

    async def handle(self, stream: Any, events: Sequence[Any]) -> None:
        """The fixed policy's step: decodes `events` and dispatches them as one batch."""
        await self.wait_for_breaker()
        await self.dispatch(stream, events, await self.decode(events))

    async def decode(self, events: Sequence[Any]) -> DecodedBatch:
        """`events` decoded and validated on the decode thread: each a request or its dead
        letter. They count as in flight until `dispatch`ed and answered."""
        records = [to_record(e) for e in events]
        self.metrics.requests.inc(len(records))
        self.metrics.in_flight.inc(len(records))
        try:
            decoded = await asyncio.get_running_loop().run_in_executor(
                self.decode_executor or self.executor, self.pipeline.decode, records)
        except BaseException:
            self.metrics.in_flight.dec(len(records))
            raise
        self.metrics.stage_time.labels("decode").observe(decoded.decode_ms / 1000)
        return decoded

    async def dispatch(self, stream: Any, events: Sequence[Any], decoded: DecodedBatch,
                       ahead: int = 1) -> Dispatched:
        """Waits until at most `ahead` earlier batches are still in flight, queues the ranking
        of `decoded` (the records of `events`) and returns its futures: batch k+1 is decoded
        while batch k is ranked and published. A batch with nothing to rank is processed here, at
        once. Batches are ranked, published and acked in the order dispatched: results keep
        their per-partition order, and each input is acked only after its own result was
        acknowledged by the broker."""
        loop = asyncio.get_running_loop()
        try:
            # At most `ahead` batches ahead of this one. One keeps the ranker busy without
            # letting decoded batches queue up behind several rankings (latency at moderate
            # load); the scheduler, which hands the ranker a batch only once it is free, lets
            # more be published meanwhile.
            while len(self._in_flight) > ahead:
                await self._in_flight[0]  # raises the error of a failed batch
                self._in_flight.popleft()  # only once done: close() still sees it if cancelled
            if decoded.has_requests:
                ranking = loop.run_in_executor(self.executor, self.pipeline.process, decoded)
            else:  # only dead letters: nothing for the ranker
                ranking = loop.create_future()
                ranking.set_result(self.pipeline.process(decoded))
        except BaseException:
            self.metrics.in_flight.dec(len(decoded))
            raise
        previous = self._in_flight[-1] if self._in_flight else None
        published = asyncio.ensure_future(
            self._finish(stream, events, decoded.records, ranking, previous))
        self._in_flight.append(published)
        return Dispatched(ranking, published)

    async def flush(self) -> None:
        """Waits until every handled batch is published and acked; raises the first error."""
        while self._in_flight:
            await self._in_flight[0]
            self._in_flight.popleft()

    async def close(self, timeout_s: float = 5.0) -> None:
        """On stop: gives the batches in flight `timeout_s` to finish (a clean stop then
        commits them), then drops the rest; inputs not acked are delivered again. Never
        raises."""
        in_flight, self._in_flight = list(self._in_flight), collections.deque()
        if not in_flight:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*in_flight)), timeout_s)
        except asyncio.TimeoutError:
            log.warning("batches in flight were not published within %.1f s of stopping; their "
                        "inputs are not acked and will be delivered again", timeout_s)
        # Whatever a publish raised, its inputs stay unacked: log it and let the stop go on.
        except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
            log.warning("publishing a batch in flight failed while stopping: %r", error)
        finally:
            for task in in_flight:
                task.cancel()  # no-op for those that finished

    async def _finish(self, stream: Any, events: Sequence[Any], records: Sequence[InputRecord],
                      ranking: asyncio.Future, previous: asyncio.Future | None) -> None:
        try:
            processed: ProcessedBatch = await ranking
            self._record_breaker(processed.outcomes)
            if previous is not None:
                await previous  # its results go out first; its failure is this batch's too
            publish_start = time.perf_counter()
            producer = await self.results_topic.app.maybe_start_producer()
            # Under exactly-once, no commit between the first send and the last ack: the
            # transaction holds this batch's results exactly when it commits its offsets.
            async with commit_guard(producer):
                await self._publish(processed.outcomes)
                for event in events:
                    await stream.ack(event)
            self.metrics.stage_time.labels("publish").observe(time.perf_counter() - publish_start)
        except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
            self.on_bug(error)
            raise
        finally:
            self.metrics.in_flight.dec(len(records))
        for record in records:
            self.state.last_offsets[(record.topic, record.partition)] = record.offset
        self._observe(processed)

    async def wait_for_breaker(self) -> None:
        """Holds the taken batch while the breaker is open. Faust waits for every taken record
        to be acked before it stops or revokes partitions, so a stop or rebalance ends the
        wait: the held batch is then ranked at once (one trial batch, as after a cooldown)."""
        breaker = self.state.breaker
        while breaker is not None and breaker.seconds_until_retry() > 0:
            self.metrics.breaker_open.set(1)
            if not self.flow_active():
                log.warning("stopping or rebalancing with the breaker open: ranking the held "
                            "batch now instead of after the cooldown")
                return
            await asyncio.sleep(min(breaker.seconds_until_retry(), 0.5))

    def _topic_for(self, outcome: Outcome) -> Any:
        return self.results_topic if outcome.is_result else self.dead_letter_topic

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Sends outcomes (e.g. an engagement's dead letter) as a batch's are sent: retried
        until the broker acknowledged each one or its `publish_failed` stand-in."""
        await self._publish(outcomes)

    async def _publish(self, outcomes: Sequence[Outcome]) -> None:
        """Sends all outcomes and waits for the broker's acks; never raises but cancellation.

        A transient failure (broker away, timeout, leader moving) is retried after
        `send_retry_delay_s`, with a log line each time. An outcome refused for good (too
        large for the broker, a serializer bug, any non-Kafka error) is replaced by its minimal
        `publish_failed` dead letter, which is sent instead; if even that is refused, it is
        retried like a transient failure. Either way the batch is never acked unanswered."""
        pending = list(outcomes)
        attempt = 0
        # Faust's own producer (the transaction manager under exactly_once), without
        # Topic.send's per-message FutureMessage and sensor bookkeeping: that path cost ~120 us
        # of event-loop CPU per result, and the broker 3x the CPU (measured with bench.e2e).
        producer = await self.results_topic.app.maybe_start_producer()
        while pending:
            if self.state.failed is not None:
                # The worker is stopping for a failure (a send refused in a transaction):
                # these outcomes must stay unsent and their inputs unacked until the stop.
                await asyncio.get_running_loop().create_future()
            attempt += 1
            results = await self._send_all(producer, pending)
            retry: list[Outcome] = []
            wait = broken = False
            for outcome, result in zip(pending, results):
                if not isinstance(result, BaseException):
                    continue
                if isinstance(result, asyncio.CancelledError):
                    raise result
                broken = broken or breaks_sequences(result)
                if isinstance(result, OutOfOrderSequenceNumber):
                    retry.append(outcome)  # sent again with the new producer id
                    wait = True
                elif is_refused(result):
                    retry.append(outcome)
                    wait = True
                    self._refused(outcome, result, attempt, transactional=transactional_id(
                        producer, outcome.record.topic, outcome.record.partition) is not None)
                elif is_transient(result) or outcome.dead_letter_code == PUBLISH_FAILED:
                    retry.append(outcome)
                    wait = True
                    log.log(logging.WARNING if is_transient(result) else logging.ERROR,
                            "sending the outcome of %s failed (attempt %d): %r; retrying in "
                            "%.1f s", _where(outcome), attempt, result, self.send_retry_delay_s)
                else:
                    log.error("the outcome of %s was refused for good: %r; publishing a "
                              "publish_failed dead letter instead", _where(outcome), result)
                    retry.append(publish_failed(outcome, result))
            if broken:
                self._restart_sequences(producer)
            if wait:
                await asyncio.sleep(self.send_retry_delay_s)
            if not retry and self.state.refused is not None:
                log.warning("the broker takes this worker's sends again: %s", _where(pending[0]))
                self.state.refused = None
            pending = retry

    @staticmethod
    def _restart_sequences(producer: Any) -> None:
        """Before the retry of a refused send: an idempotent producer takes a new producer id
        (`IdempotentProducer.reset_producer_id`; a transactional one has none to reset)."""
        reset = getattr(producer, "reset_producer_id", None)
        if reset is not None and reset():
            log.warning("the idempotent producer starts its sequences again after a refused "
                        "send (a new producer id)")

    def _refused(self, outcome: Outcome, error: BaseException, attempt: int,
                 transactional: bool) -> None:
        """Counts a refused send, and says what to grant (on the first attempts, then at
        doubling intervals: a revoked ACL may stay revoked for hours). Inside a transaction
        the refusal aborts it, and no later send of it can succeed: the worker stops instead
        (exit 2; the batch's offsets are not committed, so a restart ranks it again)."""
        topic = self._topic_for(outcome).get_topic_name()
        self.metrics.sends_refused.labels(topic).inc()
        self.state.refused = (f"the broker refuses this worker's sends to topic {topic!r} "
                              f"({type(error).__name__}): grant it Write on that topic")
        if transactional:
            self.on_bug(SettingsError(
                f"{self.state.refused}; under exactly_once this aborts the transaction of "
                f"{_where(outcome)}, whose requests stay uncommitted: restart the worker once "
                "the ACL is back"))
            return
        if attempt & (attempt - 1) == 0:  # 1, 2, 4, 8, ...
            log.error("%s; the outcome of %s stays unanswered and its offset uncommitted, "
                      "retried every %.1f s (attempt %d)", self.state.refused, _where(outcome),
                      self.send_retry_delay_s, attempt)

    async def _send_all(self, producer: Any, outcomes: Sequence[Outcome]) -> list[Any]:
        """Sends every outcome, then waits for all the broker's acks: per outcome, its ack or
        the error raised by `send` itself (a record over the producer's size cap) or by the
        ack. One await per send and one gather of the acks, with no task per outcome."""
        results: list[Any] = [None] * len(outcomes)
        acks, sent = [], []
        for i, outcome in enumerate(outcomes):
            try:
                acks.append(await self._send(producer, outcome))
                sent.append(i)
            except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
                results[i] = error
        for i, ack in zip(sent, await asyncio.gather(*acks, return_exceptions=True)):
            results[i] = ack
        return results

    async def _send(self, producer: Any, outcome: Outcome) -> asyncio.Future:
        """Queues one outcome on the producer; returns the future of the broker's ack. Under
        exactly-once it goes into its input partition's transaction."""
        record = outcome.record
        return await producer.send(
            self._topic_for(outcome).get_topic_name(), outcome.key, outcome.value, None, None,
            None, transactional_id=transactional_id(producer, record.topic, record.partition))

    def _observe(self, processed: ProcessedBatch) -> None:
        m, outcomes = self.metrics, processed.outcomes
        if processed.ranked:  # a batch of dead letters only is no model batch
            m.batch_size.observe(len(outcomes))
            m.model_time.observe(processed.times.model_ms / 1000)
            for stage, ms in processed.times._asdict().items():
                if stage != "decode_ms":  # observed as each batch is decoded
                    m.stage_time.labels(stage.removesuffix("_ms")).observe(ms / 1000)
        results = collections.Counter()
        acked_ms = time.time() * 1000  # called once the batch's sends are acked
        for outcome in outcomes:
            sent = outcome.record.timestamp_ms
            if outcome.is_result:
                results[outcome.model_version] += 1
                if sent:
                    m.latency.observe(max(0.0, acked_ms - sent) / 1000)
            else:
                m.dead_letters.labels(outcome.dead_letter_code).inc()
            if sent:
                m.queue_wait.observe(max(0.0, processed.started_ms - sent) / 1000)
        m.results.inc(sum(results.values()))  # once per batch: each inc takes a lock
        for version, count in results.items():
            m.model_results.labels(version).inc(count)
        m.compilations.set(compilations.count())

    def _record_breaker(self, outcomes: Sequence[Outcome]) -> None:
        # Right after ranking, before publishing: the next batch must already see it open.
        m, breaker = self.metrics, self.state.breaker
        # An expired request says the worker is behind, not that the input is bad: the breaker,
        # which pauses consumption, would only put it further behind.
        if breaker is not None and breaker.record(
                not o.is_result for o in outcomes if o.dead_letter_code != EXPIRED):
            m.breaker_open.set(1)
            log.error("DEAD-LETTER CIRCUIT BREAKER OPEN: %s", breaker.reason)
        elif breaker is not None and not breaker.is_open:
            m.breaker_open.set(0)
