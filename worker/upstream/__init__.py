"""Fixes of Faust, mode, aiokafka and asyncio behaviour, made through their internals.

Every use of a dependency's private name lives in this package, one module per fix, each
saying what breaks without it and citing (or drafting) the upstream report;
`tests/test_upstream_private_names.py` fails if code outside it reaches into a dependency.
The pinned versions are checked at import (`versions`); `tests/test_kafka_tuning.py` and
`tests/test_exactly_once.py` fail the day upstream changes the code a fix replaces.

Consumer (Faust's aiokafka driver):
  fetch_wait             the fetch long-poll wait Faust hard-codes to 1500 ms (latency)
  thread_loop            the consumer thread's event loop of the app's kind (uvloop)
  inline_delivery        one delivery per fetched record without four tasks (throughput)
  takeover_seek          the seek after a rebalance: flow stopped, uncommitted partitions
                         included (correctness: lost requests)
  changelog_end_offsets  where table recovery ends a changelog (correctness: stale tables)
Producer and exactly-once:
  idempotent_producer    an idempotent producer outside exactly-once
  producer_id_reset      a new producer id after a batch refused for good (ACLs)
  producer_buffer_drain  the table-write buffer drained before a commit
  exactly_once_commit    output in its input's transaction; commits that never split a batch
Tables:
  thread_safe_rocksdb_read   reading the RocksDB store from another thread
  memory_store_revoked_keys  the memory store forgetting users of partitions given away
Worker:
  stop_signal            a hook on the first stop signal (the bounded stop)
  tuned_app              the app and transport that install the consumer/producer fixes

Import the module a name lives in; this package imports none of them itself.
"""
