"""The memory table store forgetting the keys of partitions given away, for keys written
by the worker (not only those restored from the changelog).

What breaks without it: Faust's memory store records which partition a key belongs to
(its private `Store._key_partition`) only for the keys it restores from the changelog, and
after a rebalance drops the keys of partitions this worker no longer owns from that record
(`Store.on_recovery_completed`). Values the worker writes itself were never recorded, so they
stayed in memory after their partition moved to another worker: stale histories and a table
that only grows. `track_key_partition` records them as Faust does. Pinned by
tests/test_history_recovery.py.

Upstream: drafted report: "faust-streaming: memory Store only fills _key_partition from
changelog recovery; keys set through table[key] = value are not associated with their
partition, so on_recovery_completed never evicts them when the partition is revoked.
Proposal: record the partition of the current event in Store._set (as the changelog batch
iterator does)."
"""

from __future__ import annotations

from typing import Any


def track_key_partition(table: Any, key: bytes, partition: int) -> None:
    """Records that `key` of a memory-store `table` belongs to `partition` (no-op for a store
    without that record)."""
    key_partition = getattr(table.data, "_key_partition", None)  # Faust 0.15.3, pinned
    if key_partition is not None:
        key_partition[key] = partition
