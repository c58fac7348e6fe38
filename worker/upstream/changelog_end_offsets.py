"""Where table recovery ends a changelog (a correctness fix: stale or empty tables).

What breaks without it, 1 (the embedded broker): tansu answers ListOffsets(latest) with the
*base* offset of a partition's last record batch + 1, not the last offset + 1. Faust's
recovery reads a changelog up to that end and then stops consuming it, so every record after
the first of the changelog's last batch (one producer flush) was never applied: stale table
state after a restart or takeover. A fetch response's high watermark is right, so each
partition with records is fetched once from just below the reported end, and the larger of
the two ends is used (`fetched_end_offsets`). Real Kafka reports both the same; the probe
costs one short-lived consumer per recovery there.

What breaks without it, 2 (exactly-once): Faust 0.15.3 takes the consumer's cached last
stable offset for that end, which is unknown before the first fetch of the partition: Faust
then reads it as an empty changelog and skips recovery (a worker that takes a partition over
ranks against an empty table), or stops with a ConsistencyError when the table has a
persisted offset. And the last stable offset itself lies past the last record (each commit
marker takes an offset), which Faust notices only after two idle 5 s waits.
`committed_record_ends` reads the tail of each partition with a read_committed consumer
instead (aiokafka's private `_isolation_level`, read in `start()` as the fetch wait is).

Both replace Faust's private `AIOKafkaConsumerThread._highwaters` (`FetchedEndsThread`), and
build their probe consumer through its private `_create_client_consumer`. Pinned by
tests/test_kafka_tuning.py ("end offsets for table recovery") and tests/test_exactly_once.py.

Upstream: drafted report (Faust): "faust-streaming: under processing_guarantee=exactly_once,
AIOKafkaConsumerThread._highwaters returns consumer.last_stable_offset(tp), which is None
before the partition's first fetch; Recovery reads None as an empty changelog and skips
recovery, so a worker taking a partition over starts from an empty table. Proposal: ask the
broker (end_offsets with read_committed) and end at the last committed record, not at the
LSO." The tansu end offset is a broker bug, worked around here: drafted report (tansu):
"ListOffsets(latest) returns the last batch's base offset + 1 instead of the high watermark."
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import aiokafka
from faust.types import TP

from worker.upstream.fetch_wait import ConsumerTuning, apply_tuning, tuning_of

_READ_COMMITTED = "read_committed"


class FetchedEndsThread:
    """Mixin for Faust's `AIOKafkaConsumerThread`: the end offsets table recovery reads to."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """End offsets as Faust's table recovery reads them: checked against a fetch, or under
        exactly-once one past each partition's last committed record (see the module doc)."""
        if self.consumer.in_transaction:
            return await committed_record_ends(
                lambda: self._create_client_consumer(self.transport), partitions,
                tuning_of(self.transport))
        reported = dict(await super()._highwaters(partitions))
        return await fetched_end_offsets(
            lambda: self._create_client_consumer(self.transport), reported,
            tuning_of(self.transport))


async def committed_record_ends(
    new_consumer: Callable[[], aiokafka.AIOKafkaConsumer], partitions: list[TP],
    tuning: ConsumerTuning, *, timeout_s: float = 10.0,
) -> dict[TP, int]:
    """Under exactly-once: per partition, one past its last committed record, the end table
    recovery must read to: a read_committed consumer reads the tail of each partition, a
    growing window back from its last stable offset, for its last record."""
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
