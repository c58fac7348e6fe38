"""Exactly-once on Faust 0.15.3: what the worker holds, over the fixes in worker/upstream/.

Faust's exactly-once design is Kafka's first one (KIP-98/129): one transactional producer
per partition index of a co-partitioned topic group, `{group_id}-{group}-{partition}`, begun on
assignment; a commit sends that partition's input offsets into its transaction and commits it.
A new owner of the partition starts a producer with the same id, which fences the old owner
and aborts its open transaction. The worker's requests, engagements and history changelog have
the same partition count, so they form one group: transaction `{group_id}-0-{p}` holds the
results and dead letters of request partition p, the changelog writes of engagement partition
p, and both input offsets. They commit every `kafka_clients.EXACTLY_ONCE_COMMIT_INTERVAL_S`.

What Faust 0.15.3 lacks, fixed in worker/upstream/ (each shown and pinned by
tests/test_exactly_once.py):

1. Output goes into the wrong transaction or none (`exactly_once_commit`: sent in the
   transaction of its *input* partition, `transactional_id` here).
2. A commit can split a batch (`exactly_once_commit`: `commit_guard` here is held by the
   worker from a batch's first send to its last ack, and by the commit itself).
3. Table writes can miss their commit (`producer_buffer_drain`: the commit drains Faust's
   buffer of changelog writes first).
4. A worker that takes over a partition skips its table's recovery
   (`changelog_end_offsets.committed_record_ends`).
5. A worker given back partitions it held keeps their open transactions and may read their
   committed offsets before the last commit is complete (`exactly_once_commit`: a rebalance
   restarts the producer of every assigned partition, which completes or aborts what is
   pending before the offsets are read).
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncContextManager

from faust.types import TP

from worker.upstream.exactly_once_commit import ExactlyOnceTransactions


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
