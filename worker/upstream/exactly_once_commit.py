"""Exactly-once commits on Faust 0.15.3: output in its input partition's transaction, and
commits that never split a batch (correctness fixes: results outside every transaction, and
duplicates after a crash). The design they fix is described in worker/exactly_once.py.

What breaks without it, 1 (routing): `TransactionManager.send` picks the producer by the
*output* record's partition in the consumer's metadata; for a topic the worker does not
consume (results, dead letters) there is none, so results were sent by the plain producer,
outside every transaction. `ExactlyOnceTransactions.send` takes the transactional id of the
*input* partition (`transactional_id_for`), as Kafka Streams does.

What breaks without it, 2 (split batches): Faust commits on a timer, whenever the acked
offsets allow; a commit between a batch's sends and its acks committed its results without
its offsets (a crash then ranks it again: a duplicate). `ExactlyOnceTransactions.commit_guard`
is held by the worker from a batch's first send to its last ack
(`worker.exactly_once.commit_guard`), and by `guarded_commit` from reading the acked offsets
to the end of the commit, after draining buffered table writes
(worker/upstream/producer_buffer_drain.py), so a transaction always holds exactly the output
of the offsets it commits.

What breaks without it, 3 (kept partitions; one CI run of tests/test_cluster.py's cut under
exactly-once answered 139 requests twice): at a rebalance that gives the worker back partitions
it held (its session expired while it was cut off from the group's coordinator), Faust keeps
their transactional producers, open transactions included, and then seeks the partitions to
their committed offsets. Those offsets come from aiokafka's OffsetFetch v3, which has no
`require_stable` (v7, KIP-447): right after a transaction's commit returns, Apache Kafka can
still answer the offsets before it (tests/test_exactly_once.py shows it), and inputs whose
results that transaction committed are ranked and committed again; output left in a kept open
transaction would be committed beside its inputs' second ranking too.
`ExactlyOnceTransactions.on_rebalance` restarts the producer of every assigned partition before
that seek, as a new owner would: its InitProducerId aborts what is open and returns only once
every earlier transaction of the id is complete (markers written), so the offsets read next are
those committed with the output.

Beside the fixes: the partitions' transactions commit concurrently (Faust commits them one
after another, and results wait for the slowest). Only Faust's public hooks are overridden
here (`TransactionManager.send/commit/on_rebalance`, `Consumer.force_commit`; the restart reads
Faust's `_tps_to_transactional_ids`, so that its ids are the ones Faust starts). Pinned by
tests/test_exactly_once.py.

Upstream: drafted report: "faust-streaming: under exactly_once, TransactionManager.send
chooses the transactional producer from the output partition; records sent to topics the app
does not consume (e.g. a results topic) go out on the non-transactional producer, and the
periodic commit can fall between an agent's sends and its acks. Proposal: send in the
transaction of the source event's partition (as Kafka Streams), and commit only offsets
whose agent has finished its sends. Also: on_rebalance keeps the producers (and open
transactions) of partitions assigned again, while the offsets then read may predate the last
commit (aiokafka's OffsetFetch has no require_stable); restart them, as a new owner would."
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Set
from typing import Any, Awaitable, Callable

from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.types import TP
from faust.types.tuples import RecordMetadata


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

    async def on_rebalance(self, assigned: Set[TP], revoked: Set[TP],
                           newly_assigned: Set[TP]) -> None:
        """Faust's, with the producers of partitions kept through the rebalance restarted
        (fix 3 in the module doc): every assigned partition starts from its committed offsets
        with a fresh transaction, and no commit runs meanwhile."""
        async with self.commit_guard:
            for transactional_id in sorted(self._tps_to_transactional_ids(assigned)):
                await self.producer.stop_transaction(transactional_id)
            await super().on_rebalance(assigned, revoked, newly_assigned)

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


class GuardedCommitConsumer:
    """Mixin for Faust's `Consumer`: its commit, under exactly-once held by the commit guard."""

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        parent = super().force_commit
        return await guarded_commit(self, lambda: parent(
            topics, start_new_transaction=start_new_transaction))
