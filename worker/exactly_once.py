"""Exactly-once on Faust 0.15.3: what its transaction manager lacks, added through its hooks.

Faust's exactly-once design is Kafka's first one (KIP-98/129): one transactional producer
per partition index of a co-partitioned topic group, `{group_id}-{group}-{partition}`, begun on
assignment; a commit sends that partition's input offsets into its transaction and commits it.
A new owner of the partition starts a producer with the same id, which fences the old owner
and aborts its open transaction. The worker's requests, engagements and history changelog have
the same partition count, so they form one group: transaction `{group_id}-0-{p}` holds the
results and dead letters of request partition p, the changelog writes of engagement partition
p, and both input offsets.

What Faust 0.15.3 lacks, fixed here (each shown and pinned by tests/test_exactly_once.py):

1. Output goes into the wrong transaction or none. `TransactionManager.send` picks the
   producer by the *output* record's partition in the consumer's metadata; for a topic the
   worker does not consume (results, dead letters) there is none, so results were sent by the
   plain producer, outside every transaction. `send` here takes the transactional id of the
   *input* partition (`transactional_id_for`), as Kafka Streams does.
2. A commit can split a batch. Faust commits on a timer, whenever the acked offsets allow; a
   commit between a batch's sends and its acks committed its results without its offsets (a
   crash then ranks it again: a duplicate). `commit_guard` is held by the worker from a batch's
   first send to its last ack, and by `guarded_commit` from reading the acked offsets to the
   end of the commit, so a transaction always holds exactly the output of the offsets it
   commits.
3. Table writes can miss their commit. Faust buffers changelog writes and sends them in the
   background; a commit did not wait for that buffer, so an engagement's offset could be
   committed in one transaction and its table write sent in the next (killed before that one
   committed, the engagement was lost: seen once in 600 under two SIGKILLs). Faust's own
   `ProducerBuffer.flush` is no help: it gives up after 0.1 s without a send, and returns while
   the background task still sends the last message it took. `guarded_commit` drains the
   buffer first (`DrainableProducerBuffer.drain`: every buffered write handed to its
   transaction, and every send in progress finished).
4. A worker that takes over a partition skips its table's recovery: Faust ends a changelog
   at the consumer's cached last stable offset, unknown before the first fetch (read as "empty").
   `worker.kafka_tuning.committed_record_ends` finds the last committed record instead.

Beside the fixes: the partitions' transactions commit concurrently (Faust commits them one
after another, and results wait for the slowest), every `EXACTLY_ONCE_COMMIT_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any, AsyncContextManager, Awaitable, Callable

from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.types.tuples import RecordMetadata

# How often the worker commits under exactly-once: results reach read_committed readers then.
EXACTLY_ONCE_COMMIT_INTERVAL_S = 0.1


class ExactlyOnceTransactions(TransactionManager):
    """Faust's transaction manager with output sent in its input partition's transaction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Held from a batch's first send to its last ack, and across a commit (see module doc).
        self.commit_guard = asyncio.Lock()

    def transactional_id_for(self, source: TP) -> str:
        """The id of the transaction that commits `source`'s offsets (Faust's own format)."""
        group = TopicPartitionGroup(source.topic, source.partition,
                                    self.app.assignor.group_for_topic(source.topic))
        return self.transactional_id_format.format(tpg=group, group_id=self.app.conf.id)

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Awaitable[RecordMetadata]:
        """With `transactional_id` (the worker's results and dead letters): sent in that
        transaction. Without (Faust's changelog writes, partitioned like their input): Faust's
        own choice, which is then right."""
        if transactional_id is None:
            return await super().send(topic, key, value, partition, timestamp, headers)
        return await self.producer.send(topic, key, value, partition, timestamp, headers,
                                        transactional_id=transactional_id)


    async def commit(self, offsets: Mapping[TP, int],
                     start_new_transaction: bool = True) -> bool:
        """Faust's commit, one transaction at a time there; here all at once (each commit is
        a few round trips to the transaction coordinator, and results wait for it)."""
        by_transaction: dict[str, dict[TP, int]] = collections.defaultdict(dict)
        for tp, offset in offsets.items():
            by_transaction[self.transactional_id_for(tp)][tp] = offset
        await asyncio.gather(*(
            super(ExactlyOnceTransactions, self).commit(part, start_new_transaction)
            for part in by_transaction.values()))
        return True


def commit_guard(producer: Any) -> AsyncContextManager:
    """What a batch holds from its first send to its last ack: the transactions' commit guard
    under exactly-once, nothing at least once (a commit may then come at any time)."""
    if isinstance(producer, ExactlyOnceTransactions):
        return producer.commit_guard
    return contextlib.nullcontext()


def transactional_id(producer: Any, topic: str, partition: int) -> str | None:
    """The transaction output for input `topic[partition]` belongs to (None: no transactions)."""
    if isinstance(producer, ExactlyOnceTransactions):
        return producer.transactional_id_for(TP(topic, partition))
    return None


async def guarded_commit(consumer: Any, commit: Callable[[], Awaitable[bool]]) -> bool:
    """Runs Faust's `commit` (reads the acked offsets, commits them) under the commit guard,
    after draining buffered changelog writes into the open transactions."""
    if not consumer.in_transaction:
        return await commit()
    async with consumer.transactions.commit_guard:
        producer = consumer.app.producer
        await producer.buffer.drain()
        await producer.flush()
        return await commit()


class DrainableProducerBuffer(ProducerBuffer):
    """Faust's producer buffer (where table writes wait to be sent), plus `drain()`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._sending = 0  # sends in progress, by the background task or by drain()
        self._idle = asyncio.Event()
        self._idle.set()

    async def _send_pending(self, fut: Any) -> None:
        self._sending += 1
        self._idle.clear()
        try:
            await super()._send_pending(fut)
        finally:
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def drain(self) -> None:
        """Returns once every message buffered before the call was handed to the producer
        (under exactly-once: appended to its transaction): sends what is still queued here,
        then waits for sends in progress."""
        while True:
            try:
                fut = self.pending.get_nowait()
            except asyncio.QueueEmpty:
                break
            await self._send_pending(fut)
            self.message_sent.set()
        await self._idle.wait()
