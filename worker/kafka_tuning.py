"""Consumer tuning that reaches the aiokafka consumer Faust creates (Faust 0.15.3 only).

Why: Faust 0.15.3's aiokafka driver builds its worker consumer with a hard-coded
`fetch_max_wait_ms=1500` (`AIOKafkaConsumerThread._create_worker_consumer`). The embedded tansu
broker answers a fetch long-poll by re-checking after half the remaining wait instead of waking
when data arrives, so that constant makes one Faust hop cost ~400 ms p50 there; at 10 ms it is
~8 ms. Real Kafka wakes on data, where a small wait only costs a few more idle fetches.

How: `TunedApp` is a `faust.App` whose consumer transport is `TunedTransport`, whose consumer
thread lets Faust build the consumer exactly as it always does and then replaces the fetch wait
before the consumer starts (aiokafka builds its fetcher from it in `start()`). Nothing else of
Faust's consumer configuration is copied or changed. The same classes carry three fixes of how
Faust drives that consumer, each explained where it is made: inline delivery while the flow is
active (`TunedConsumer.wait_first`), the seek after a rebalance with the flow stopped,
partitions without a committed offset included (`TunedConsumer.perform_seek`), and table
recovery reading changelogs to the end a fetch reports (`TunedConsumerThread._highwaters`;
under exactly-once, to their last committed record). The same transport carries the
exactly-once fixes (worker/exactly_once.py) and the idempotent producer. Both library versions are pinned here and in
pyproject.toml; `tests/test_kafka_tuning.py` fails if the internals this relies on move.

    app = TunedApp("ranking-worker", broker="kafka://127.0.0.1:9092",
                   consumer_tuning=ConsumerTuning(fetch_max_wait_ms=10), ...)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiokafka
import aiokafka.producer.transaction_manager
import faust
import uvloop
from mode.services import WaitResults
from faust.transport import by_url as transport_by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT

from worker.exactly_once import DrainableProducerBuffer, ExactlyOnceTransactions, guarded_commit

SUPPORTED_FAUST_VERSION = "0.15.3"
SUPPORTED_AIOKAFKA_VERSION = "0.14.0"
# The value Faust 0.15.3 hard-codes; the pin test checks it is still there (if Faust starts
# honouring a setting, this module should go).
FAUST_HARDCODED_FETCH_MAX_WAIT_MS = 1500
# aiokafka.AIOKafkaConsumer keeps the constructor argument here until start() builds the Fetcher.
_AIOKAFKA_FETCH_WAIT_ATTR = "_fetch_max_wait_ms"

_UPGRADE_HINT = (
    "worker/kafka_tuning.py overrides Faust's aiokafka consumer creation and is written for "
    f"faust-streaming=={SUPPORTED_FAUST_VERSION} with aiokafka=={SUPPORTED_AIOKAFKA_VERSION}; "
    "install the pinned versions (`make venv`), or re-check the override against the new "
    "version's faust/transport/drivers/aiokafka.py and update the pins and "
    "tests/test_kafka_tuning.py together."
)


class KafkaTuningError(RuntimeError):
    """The consumer tuning cannot be applied (library versions, broker scheme or values)."""


def check_versions() -> None:
    """Raise `KafkaTuningError` unless the pinned Faust and aiokafka versions are installed."""
    found = {"faust-streaming": faust.__version__, "aiokafka": aiokafka.__version__}
    wanted = {"faust-streaming": SUPPORTED_FAUST_VERSION, "aiokafka": SUPPORTED_AIOKAFKA_VERSION}
    wrong = [f"{n} {found[n]} (need {wanted[n]})" for n in found if found[n] != wanted[n]]
    if wrong:
        raise KafkaTuningError(f"Unsupported library version: {', '.join(wrong)}. {_UPGRADE_HINT}")


check_versions()  # at import: fail before any app exists, not at the first fetch


@dataclasses.dataclass(frozen=True)
class ConsumerTuning:
    # Longest time (ms) a fetch waits at the broker for data before returning empty. Bounds the
    # idle-to-first-record latency on tansu; Faust 0.15.3 alone would use 1500.
    fetch_max_wait_ms: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.fetch_max_wait_ms, bool) or not isinstance(self.fetch_max_wait_ms, int):
            raise KafkaTuningError(
                f"fetch_max_wait_ms must be an int number of milliseconds, got "
                f"{self.fetch_max_wait_ms!r}; pass e.g. 10."
            )
        if not 1 <= self.fetch_max_wait_ms <= 60_000:
            raise KafkaTuningError(
                f"fetch_max_wait_ms={self.fetch_max_wait_ms} is outside 1..60000 ms; 0 would "
                "busy-poll the broker. Use 10-50 ms on tansu, up to 500 ms on real Kafka."
            )


def apply_tuning(consumer: aiokafka.AIOKafkaConsumer, tuning: ConsumerTuning) -> None:
    """Set the tuned values on a consumer that has not been started yet."""
    if getattr(consumer, "_fetcher", None) is not None:
        raise KafkaTuningError(
            "The aiokafka consumer has already started, so its fetch wait is fixed; apply the "
            "tuning between construction and start()."
        )
    if not hasattr(consumer, _AIOKAFKA_FETCH_WAIT_ATTR):
        raise KafkaTuningError(
            f"aiokafka.AIOKafkaConsumer has no {_AIOKAFKA_FETCH_WAIT_ATTR!r} attribute any more. "
            + _UPGRADE_HINT
        )
    setattr(consumer, _AIOKAFKA_FETCH_WAIT_ATTR, tuning.fetch_max_wait_ms)


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its aiokafka consumer with our `ConsumerTuning`, on
    an event loop of the same kind as the app's: mode gives every thread a plain asyncio
    loop, whose pure-Python selector transports cost the fetch path more than uvloop's."""

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        uses_uvloop = isinstance(loop, uvloop.Loop)
        super().__init__(*args, loop=loop,
                         thread_loop=uvloop.new_event_loop() if uses_uvloop else None, **kwargs)
        # mode closes the thread's loop on stop only if it made the loop itself.
        self._close_thread_loop_on_stop = True

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        apply_tuning(consumer, _tuning_of(transport))
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek to committed offsets, then stream partitions with none (or 0) to their
        first offset, as the worker's reset policy (earliest) says (`TunedConsumer.perform_seek`).
        Changelog partitions are left alone: table recovery positions them itself."""
        committed = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        # aiokafka seeks only offsets > 0: None (nothing committed) and 0 both stay put.
        uncommitted = [tp for tp, offset in committed.items()
                       if not offset and tp.topic not in changelogs]
        if uncommitted:
            # Concrete offsets, not aiokafka's seek_to_beginning: that leaves a partition
            # "awaiting reset" with no position, which Faust's livelock check reads (and
            # asserts on) until the fetcher resolves it.
            earliest = await self.earliest_offsets(*uncommitted)
            await self.call_thread(_seek_each, self._ensure_consumer(), earliest)
        return committed

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets as Faust's table recovery reads them, checked against a fetch.

        Why: the embedded tansu broker answers ListOffsets(latest) with the *base* offset of
        a partition's last record batch + 1, not the last offset + 1. Faust's recovery reads a
        changelog up to that end and then stops consuming it, so every record after the first
        of the changelog's last batch (one producer flush) was never applied: stale table
        state after a restart or takeover. A fetch response's high watermark is right, so
        each partition with records is fetched once from just below the reported end, and the
        larger of the two ends is used. Real Kafka reports both the same; the probe costs one
        short-lived consumer per recovery there.
        """
        if self.consumer.in_transaction:
            return await committed_record_ends(
                lambda: self._create_client_consumer(self.transport), partitions,
                _tuning_of(self.transport))
        reported = dict(await super()._highwaters(partitions))
        return await fetched_end_offsets(
            lambda: self._create_client_consumer(self.transport), reported,
            _tuning_of(self.transport))


async def committed_record_ends(
    new_consumer: Callable[[], aiokafka.AIOKafkaConsumer], partitions: list[TP],
    tuning: ConsumerTuning, *, timeout_s: float = 10.0,
) -> dict[TP, int]:
    """Under exactly-once: per partition, one past its last committed record, the end table
    recovery must read to.

    Why: Faust 0.15.3 takes the consumer's cached last stable offset for that end, which is
    unknown before the first fetch of the partition: Faust then reads it as an empty changelog
    and skips recovery (a worker that takes a partition over ranks against an empty table), or
    stops with a ConsistencyError when the table has a persisted offset. And the last stable
    offset itself lies past the last record (each commit marker takes an offset), which Faust
    notices only after two idle 5 s waits. So a read_committed consumer reads the tail of each
    partition, a growing window back from its last stable offset, for its last record.
    """
    consumer = new_consumer()
    apply_tuning(consumer, tuning)
    consumer._isolation_level = _READ_COMMITTED  # read before start(), as the fetch wait is
    await consumer.start()
    try:
        theirs = {tp: aiokafka.TopicPartition(tp.topic, tp.partition) for tp in partitions}
        consumer.assign(list(theirs.values()))
        stable = await consumer.end_offsets(list(theirs.values()))  # read_committed: stable
        first = await consumer.beginning_offsets(list(theirs.values()))
        deadline = asyncio.get_running_loop().time() + timeout_s
        return {tp: await _last_record_end(consumer, part, first[part], stable[part], deadline)
                for tp, part in theirs.items()}
    finally:
        await consumer.stop()


_READ_COMMITTED = "read_committed"


async def _last_record_end(consumer: aiokafka.AIOKafkaConsumer, tp: aiokafka.TopicPartition,
                           first: int,
                           stable: int, deadline: float) -> int:
    """One past the last committed record of `tp` below `stable` (`first` if it has none);
    `stable` itself if the reads do not finish by `deadline`."""
    window = 64
    loop = asyncio.get_running_loop()
    while True:
        start = max(first, stable - window)
        consumer.seek(tp, start)
        last = None
        while await consumer.position(tp) < stable:
            if loop.time() > deadline:
                return stable
            for record in (await consumer.getmany(tp, timeout_ms=200)).get(tp, []):
                if record.offset < stable:
                    last = record.offset
        if last is not None:
            return last + 1
        if start == first:
            return first
        window *= 8


async def _seek_each(consumer: aiokafka.AIOKafkaConsumer, offsets: Mapping[TP, int]) -> None:
    """Each partition to its offset (run on the consumer's thread, where it lives)."""
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)


async def fetched_end_offsets(
    new_consumer: Callable[[], aiokafka.AIOKafkaConsumer], reported: Mapping[TP, int],
    tuning: ConsumerTuning, *, timeout_s: float = 10.0,
) -> dict[TP, int]:
    """`reported` end offsets, each raised to the high watermark a fetch returns for it.

    Partitions reported empty (end 0) are not fetched. A partition whose fetch does not
    answer within `timeout_s` keeps its reported end (what Faust would have used anyway).
    """
    ends = dict(reported)
    probe = [tp for tp, end in reported.items() if (end or 0) > 0]
    if not probe:
        return ends
    consumer = new_consumer()
    apply_tuning(consumer, tuning)
    await consumer.start()
    try:
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, reported[tp] - 1)  # a record below the end: the fetch answers
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = set(probe)
        while pending and asyncio.get_running_loop().time() < deadline:
            await consumer.getmany(*pending, timeout_ms=200)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = max(ends[tp], highwater)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return ends


class TunedConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the tuned thread and inline delivery.

    Inline delivery: Faust's fetch loop (`Consumer._drain_messages`) hands each message to the
    conductor as `await self.wait_first(callback(message), self.suspend_flow.wait())`, which
    creates four tasks and an `asyncio.wait` per message so that a flow suspension (a
    rebalance) can interrupt a delivery blocked on a full stream buffer. While flow is active,
    a delivery almost never blocks, so `wait_first` here runs it inline first; only when it
    does block (full buffer, producer back-pressure, flow control) is the rest handed to
    Faust's own `wait_first`, so suspension interrupts it exactly as before.
    """

    # Deliveries that finished inline / that blocked and went through Faust's wait_first.
    inline_deliveries = 0
    waited_deliveries = 0

    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset, with the consumer's flow
        stopped while it runs.

        Why: with a table, Faust's recovery resumes the flow *before* it resumes the stream
        partitions and seeks them (without tables it seeks first). The fetch loop can then
        deliver records of a batch fetched from the old position after the seek reset the
        read offset: Faust takes the jump for a gap, counts the skipped offsets as acked (so
        they are committed), and drops them as already read when they are fetched again:
        lost requests after a rebalance under load. Stopped, the fetch loop drops that stale
        batch instead (Faust's own `if not self.flow_active: break`) and fetches again from
        the committed offsets once the flow is back.

        A partition with no committed offset is not moved by that seek (aiokafka's
        `seek_to_committed` leaves it where the fetcher is, past the batch just dropped), so
        `seek_to_committed` here also puts it where the reset policy says: its first offset.
        Seen on Apache Kafka: a worker that took over partitions whose owner was killed before
        its first commit skipped every request it had fetched before the seek.
        """
        if not self.flow_active:  # already stopped (a rebalance, or getmany's own seek)
            return await super().perform_seek()
        generation = self.app.consumer_generation_id
        self.stop_flow()
        try:
            await super().perform_seek()
        finally:
            # Resume only what we stopped: not if a new rebalance began meanwhile.
            if not self.app.rebalancing and self.app.consumer_generation_id == generation:
                self.resume_flow()

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's commit; under exactly-once held by the commit guard (worker/exactly_once.py)."""
        parent = super().force_commit
        return await guarded_commit(self, lambda: parent(
            topics, start_new_transaction=start_new_transaction))

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if not _is_delivery(coros, self.suspend_flow) or self.suspend_flow.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        delivery, suspended = coros
        suspended.close()  # never started: only the slow path below waits on suspension
        try:
            awaited = delivery.send(None)  # runs until its first real suspension, if any
        except StopIteration as finished:
            self.inline_deliveries += 1
            return WaitResults([delivery], [finished.value], False)
        self.waited_deliveries += 1
        return await super().wait_first(_resume(delivery, awaited), self.suspend_flow.wait(),
                                        timeout=timeout)


_EVENT_WAIT_CODE = asyncio.Event.wait.__code__  # Faust's Consumer.suspend_flow is one


def _is_delivery(coros: tuple, suspend_flow: asyncio.Event) -> bool:
    """Whether `wait_first` was called as the fetch loop calls it: (a delivery coroutine,
    `suspend_flow.wait()` not yet started)."""
    if len(coros) != 2 or not all(isinstance(c, Coroutine) for c in coros):
        return False
    wait = coros[1]
    return (getattr(wait, "cr_code", None) is _EVENT_WAIT_CODE and wait.cr_frame is not None
            and wait.cr_frame.f_locals.get("self") is suspend_flow)


async def _resume(coro: Coroutine, awaited: Any) -> Any:
    """Drive `coro`, suspended on `awaited` (what its last `send` yielded), to the end, as
    an asyncio Task would: wait for that future, resume the coroutine, repeat."""
    try:
        while True:
            if awaited is None:  # a bare yield (asyncio.sleep(0)): just give way once
                await asyncio.sleep(0)
            else:
                awaited._asyncio_future_blocking = False  # we are its waiter now
                try:
                    await asyncio.wait([awaited])
                except asyncio.CancelledError:
                    awaited.cancel()
                    coro.close()  # unwinds its `finally` blocks (e.g. a queue's putter)
                    raise
            awaited = coro.send(None)
    except StopIteration as finished:
        return finished.value


class IdempotentProducer(faust_aiokafka.Producer):
    """Faust's producer, idempotent (and acks=all) when the app says its broker takes it;
    Faust makes it so only under exactly-once. Its buffer can be drained before a commit
    (`worker.exactly_once.DrainableProducerBuffer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        faust_buffer = self.buffer  # made in Producer.__init__, started in on_start
        self.buffer = DrainableProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = faust_buffer.app
        if hasattr(faust_buffer, "threaded_producer"):
            self.buffer.threaded_producer = faust_buffer.threaded_producer

    def _settings_extra(self) -> Mapping[str, Any]:
        extra = dict(super()._settings_extra())
        if getattr(self.app, "idempotent_producer", False):
            extra.update(acks="all", enable_idempotence=True)
        return extra

    def reset_producer_id(self) -> bool:
        """After a batch the broker refused for good (a missing ACL): the idempotent
        producer gets a new producer id and starts its sequences again. Returns whether
        there was one to reset (not when transactional, or not idempotent).

        Why: aiokafka 0.14.0 numbers a batch when it sends it and keeps the number when the
        broker refuses the batch (TopicAuthorizationFailed), so every later batch to that
        partition is OutOfOrderSequenceNumber, for good: an ACL granted back would not let
        the worker publish again. The sender asks for a new id before its next send
        (`Sender._maybe_wait_for_pid`), as the Java client does for an unresolved sequence.
        """
        producer = self._producer
        txn = getattr(producer, "_txn_manager", None)
        if txn is None or txn.transactional_id is not None:
            return False
        txn._pid_and_epoch = _NO_PRODUCER_ID
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()
        return True


_NO_PRODUCER_ID = aiokafka.producer.transaction_manager.PidAndEpoch(
    aiokafka.producer.transaction_manager.NO_PRODUCER_ID,
    aiokafka.producer.transaction_manager.NO_PRODUCER_EPOCH)


class TunedTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport carrying a `ConsumerTuning` for its consumer, and the
    exactly-once fixes (worker/exactly_once.py)."""

    Consumer = TunedConsumer
    Producer = IdempotentProducer
    TransactionManager = ExactlyOnceTransactions

    def __init__(self, *args: Any, consumer_tuning: ConsumerTuning, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer_tuning = consumer_tuning


def _tuning_of(transport: Any) -> ConsumerTuning:
    if not isinstance(transport, TunedTransport):
        raise KafkaTuningError(
            f"TunedConsumerThread needs a TunedTransport, got {type(transport).__name__}; "
            "create the app with worker.kafka_tuning.TunedApp."
        )
    return transport.consumer_tuning


class TunedApp(faust.App):
    """A `faust.App` whose Kafka consumer uses `consumer_tuning`; otherwise plain Faust.

    The broker URL keeps Faust's own schemes (`kafka://`, `aiokafka://`); other transports
    (e.g. `confluent://`) are refused because the tuning would silently not apply.
    """

    def __init__(
        self, id: str, *, consumer_tuning: ConsumerTuning | None = None,
        idempotent_producer: bool = False, **options: Any
    ) -> None:
        check_versions()  # again here: an import-time check can be bypassed by reloads/patching
        self.consumer_tuning = consumer_tuning if consumer_tuning is not None else ConsumerTuning()
        self.idempotent_producer = idempotent_producer
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        # Faust's own hook for the consumer transport (App.transport calls it once, lazily).
        urls = self.conf.broker_consumer
        driver = transport_by_url(urls[0])
        if not (isinstance(driver, type) and issubclass(driver, faust_aiokafka.Transport)):
            raise KafkaTuningError(
                f"Broker URL {str(urls[0])!r} selects transport {driver!r}, which is not Faust's "
                "aiokafka driver, so the consumer tuning cannot apply; use kafka://host:port."
            )
        return TunedTransport(urls, self, consumer_tuning=self.consumer_tuning)
