"""Reading Faust's RocksDB table store from another thread than the event loop.

What breaks without it: the worker reads a user's history on its decode thread while the
event loop writes the table. Faust's own read (`table.get` -> `Store._get`) goes through an
LRU key index (`Store._key_index`) that is not thread-safe; reading the partition databases
directly is (rocksdict reads are). Faust 0.15.3 keeps them in the store's private `_dbs`
(partition -> rocksdict.Rdict, raw mode); co-partitioning puts a user in one of them. Pinned by
tests/test_history_recovery.py (`test_rocksdb_store_keeps_one_raw_rocksdict_per_partition_in_dbs`).

Upstream: drafted report: "faust-streaming: the RocksDB Store has no thread-safe read:
Store._get_bucket_for_key updates an LRUCache key index, so reading a table from an executor
thread races with the event loop. Proposal: a documented `get_nowait`/`lookup` that reads the
partition databases without touching the key index (rocksdb reads are thread-safe)."
"""

from __future__ import annotations

from typing import Any


def read_partition_dbs(table: Any, key: bytes) -> bytes | None:
    """`key`'s raw stored value in `table`'s RocksDB store, None if it has none; safe to call
    from any thread."""
    # A snapshot of the partition databases: the loop may open one meanwhile.
    for db in list(table.data._dbs.values()):
        value = db.get(key)
        if value is not None:
            return value
    return None
