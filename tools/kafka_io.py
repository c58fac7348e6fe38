"""Kafka I/O of the tools and benchmarks, each job written once.

Every client is opened with `connection(...)`: the bootstrap servers plus the security settings
(TLS, SASL) from the worker's one settings object, so a tool reaches a secured cluster exactly
as the worker does.

    conn = connection("127.0.0.1:9092")
    await topic_partitions(conn, "ranking-requests")            # describe; refuse a missing topic
    async for records, arrived_ms in read_from_start(conn, ["ranking-results"], count=100): ...
    async with AIOKafkaProducer(**conn) as producer:
        await send_paced(producer, topic, items, encode, pace=Pace(rate=200))
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tools.pacing import Pace
from worker.errors import WorkerError
from worker.kafka_clients import client_kwargs
from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS, Settings
from worker.topics import partition_counts

T = TypeVar("T")

MAX_PENDING_SENDS = 1000  # sends in flight before waiting for their acks
FETCH_WAIT_MS = EMBEDDED_BROKER_FETCH_WAIT_MS  # tansu answers a waiting fetch only then
_POLL_MS = 200


class KafkaIOError(WorkerError):
    """A tool's Kafka request that cannot be served as asked (a missing topic, a bad count)."""


def connection(bootstrap: str | None = None, settings: Settings | None = None
               ) -> dict[str, Any]:
    """aiokafka connection arguments: `bootstrap` (default: the settings' broker) plus the
    security settings (default: `RANKER_*` from the environment)."""
    return client_kwargs(settings if settings is not None else Settings.load(()), bootstrap)


# -- describe -------------------------------------------------------------------------------


async def topic_partitions(conn: Mapping[str, Any], topic: str) -> list[int]:
    """The topic's partition ids; `KafkaIOError` if it does not exist (it is never created:
    only all topics are described)."""
    partitions = await assignable_partitions(conn, [topic])
    if not partitions:
        raise KafkaIOError(f"topic {topic!r} does not exist on {conn['bootstrap_servers']}; "
                           "create it first or fix the name")
    return [tp.partition for tp in partitions]


async def assignable_partitions(conn: Mapping[str, Any], topics: Sequence[str]
                                ) -> list[TopicPartition]:
    """Every partition of the `topics` that exist (missing ones are left out, never created).

    Described through a metadata request for all topics: a consumer's own metadata covers only
    the topics it has named (Apache Kafka; the embedded broker lists all of them either way).
    """
    options = {k: v for k, v in conn.items() if k != "bootstrap_servers"}
    counts = await partition_counts(conn["bootstrap_servers"], topics, **options)
    return [TopicPartition(t, p) for t in topics for p in range(counts.get(t, 0))]


# -- read from the start ---------------------------------------------------------------------


async def start_at_beginning(conn: Mapping[str, Any], topics: Sequence[str],
                             fetch_max_wait_ms: int = FETCH_WAIT_MS,
                             isolation_level: str = "read_uncommitted") -> AIOKafkaConsumer:
    """A started consumer assigned every partition of `topics` at their first offsets: no
    group, no commits, so reading never moves a deployment's offsets. `KafkaIOError` when
    none of the topics exists (the consumer is then stopped). `isolation_level`
    "read_committed" reads only committed transactions (an exactly-once worker's output as
    its downstream consumers see it)."""
    consumer = AIOKafkaConsumer(**conn, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=isolation_level,
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await consumer.start()
    try:
        partitions = await assignable_partitions(conn, topics)
        if not partitions:
            raise KafkaIOError(f"none of the topics {list(topics)} exists on "
                               f"{conn['bootstrap_servers']}; create them first")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def read_from_start(conn: Mapping[str, Any], topics: Sequence[str], *,
                          count: int | None = None, idle_timeout_s: float | None = None,
                          fetch_max_wait_ms: int = FETCH_WAIT_MS
                          ) -> AsyncIterator[tuple[list[ConsumerRecord], float]]:
    """Yields `(records, arrived_ms)` per fetch from the first offsets of `topics`, until
    `count` records (never more) or `idle_timeout_s` without a record (None: forever).
    Per-partition order is kept; partitions interleave in fetch order."""
    if count is not None and count < 0:
        raise KafkaIOError(f"count must be >= 0, got {count}")
    consumer = await start_at_beginning(conn, topics, fetch_max_wait_ms)
    try:
        async for fetch in _fetches(consumer, count, idle_timeout_s):
            yield fetch
    finally:
        await consumer.stop()


async def _fetches(consumer: AIOKafkaConsumer, count: int | None, idle_timeout_s: float | None
                   ) -> AsyncIterator[tuple[list[ConsumerRecord], float]]:
    seen, last = 0, time.monotonic()
    while count is None or seen < count:
        wanted = None if count is None else count - seen
        batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=wanted)
        if not batches:
            if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                return
            continue
        arrived_ms = time.time() * 1000.0  # every record of this fetch arrived now
        last = time.monotonic()
        records = [r for rs in batches.values() for r in rs]
        seen += len(records)
        yield records, arrived_ms


class TopicFollower:
    """Reads `topics` from the start in a background task and hands each fetch to
    `on_records(records, arrived_ms)`. Subclass and override `on_records`; use as
    `async with` (entering fails at once when none of the topics exists)."""

    def __init__(self, conn: Mapping[str, Any], topics: Sequence[str],
                 fetch_max_wait_ms: int = FETCH_WAIT_MS,
                 isolation_level: str = "read_uncommitted"):
        self.conn, self.topics = dict(conn), list(topics)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.isolation_level = isolation_level
        self._task: asyncio.Task | None = None

    def on_records(self, records: list[ConsumerRecord], arrived_ms: float) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> "TopicFollower":
        consumer = await start_at_beginning(self.conn, self.topics, self.fetch_max_wait_ms,
                                            self.isolation_level)
        self._task = asyncio.create_task(self._run(consumer))
        return self

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async for records, arrived_ms in _fetches(consumer, None, None):
                self.on_records(records, arrived_ms)
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


# -- send with a pace and a window of pending acks ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One message to send."""

    value: bytes
    key: bytes | None = None
    timestamp_ms: int | None = None  # None: the producer stamps the send time
    topic: str | None = None  # None: the topic `send_paced` was given


async def send_paced(producer: AIOKafkaProducer, topic: str, items: Iterable[T],
                     encode: Callable[[T], Outgoing], *, pace: Pace | None = None,
                     recorded_ms: Callable[[T], int] | None = None,
                     on_ack: Callable[[asyncio.Future], None] | None = None,
                     window: int = MAX_PENDING_SENDS,
                     paced: Callable[[T], bool] | None = None) -> int:
    """Sends every item, each `encode`d only once it is due (so a send-time timestamp is the
    send time), with at most `window` sends awaiting their acks. Returns the count once every
    send is acknowledged; raises aiokafka's KafkaError on the first failed delivery. Items
    for which `paced` is False go out at once, taking no slot of the pace."""
    pace = pace or Pace()
    start = time.monotonic()
    pending: list[asyncio.Future] = []
    sent = 0
    for item in items:
        if paced is None or paced(item):
            wait = (start + pace.due_s(recorded_ms(item) if recorded_ms else None)
                    - time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
        out = encode(item)
        future = await producer.send(out.topic or topic, out.value, key=out.key,
                                     timestamp_ms=out.timestamp_ms)
        if on_ack is not None:
            future.add_done_callback(on_ack)
        pending.append(future)
        sent += 1
        if len(pending) >= window:
            await asyncio.gather(*pending)  # raises the first failed delivery
            pending.clear()
    await asyncio.gather(*pending)
    return sent
