"""A fetch that returns while the flow is stopped is put back (a correctness fix: a table
rebuilt without the partitions a worker took over).

What breaks without it: Faust's fetch loop asks the consumer thread for the records of its
active partitions, waiting up to a second (`Consumer._drain_messages`: `getmany(timeout=1.0)`).
A call made just before a rebalance stays parked in aiokafka (`Fetcher.fetched_records` waits
for the new assignment) and reads Faust's active partitions from a set that the rebalance
updates in place. Once the recovery has sought the changelog partitions to where it reads
from and resumed them, that call returns their records, a moment before Faust resumes the
flow. Faust's `getmany` drops a batch that comes back while the flow is stopped and seeks the
stream partitions to their committed offsets, but nothing seeks the changelog partitions
back: their records are consumed and never reach the recovery, which then finds each
changelog's position at its end, takes the gap for aborted transactions ("Aborted tx until
highwater") and completes with those partitions empty. Seen on Apache Kafka under
exactly-once, 2 of 9 runs of tests/test_history_live.py's takeover test: the worker
that took over a killed one's partitions ranked its users with no history.

`RewindStaleFetchThread._fetch_records` looks at the flow on the consumer thread as soon as a
fetch returns; if it is stopped, it seeks each partition of the batch back to its first
record and returns nothing. aiokafka returns only records that start at a partition's current
position, so the seek puts the position back where it was: the records are fetched again
after the flow resumes, from wherever the recovery or Faust's own seek has put them since.
Pinned by tests/test_kafka_tuning.py ("a fetch returned while the flow is stopped").

Upstream: drafted report: "faust-streaming: a getmany in flight across a rebalance can
return changelog records after Recovery seeks and resumes the changelog partitions but before
it resumes the flow; Consumer.getmany drops the batch (flow not active) and perform_seek moves
only stream partitions, so the recovery never receives those records and ends with
'Aborted tx until highwater' and an empty table. Proposal: seek dropped partitions back to
the first dropped offset, or check the flow in the consumer thread before draining."
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class RewindStaleFetchThread:
    """Mixin for Faust's `AIOKafkaConsumerThread`: a fetch that returns while the flow is
    stopped is sought back and returns no records (see the module doc)."""

    async def _fetch_records(self, consumer: Any, active_partitions: Any,
                             timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        if records and not self.consumer.flow_active:
            # No await from the fetch to here: nothing on this thread moved the positions.
            rewound = put_back(consumer, records)
            logger.info("Put back %d records fetched while the flow was stopped "
                        "(a rebalance): %s", sum(rewound.values()), rewound)
            return {}
        return records


def put_back(consumer: Any, records: dict[Any, list[Any]]) -> dict[Any, int]:
    """Seeks each partition of `records` (tp -> records in offset order) to its first record;
    returns how many records of each were put back."""
    rewound = {}
    for tp, batch in records.items():
        if batch:
            consumer.seek(tp, batch[0].offset)
            rewound[tp] = len(batch)
    return rewound
