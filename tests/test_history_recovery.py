"""Pins: no request is handed to the ranking agent before the history table of its partition
is rebuilt from the changelog, and our consumer keeps it so (Faust 0.15.3 internals).

How Faust 0.15.3 guarantees it, step by step (each step pinned below):
  1. on every assignment, `App._on_partitions_assigned` pauses *all* assigned partitions before
     it starts table recovery (`tables.on_rebalance`);
  2. recovery resumes only the changelog partitions while it reads them to their highwater
     (`Recovery._restart_recovery`), and resumes the stream partitions (requests, engagements)
     only in `on_recovery_completed` (or `_resume_streams` when there is nothing to read);
  3. the fetch loop hands over only records of active (not paused) partitions
     (`Consumer.getmany`);
  4. the assignor co-partitions topics with the same partition count: partition p of
     requests, engagements and the changelog goes to one worker;
  5. `TunedConsumer` overrides none of that: only how a record already chosen is delivered;
     `TunedConsumerThread` only raises the highwaters of step 2 to the ends a fetch reports
     (the embedded broker lists them short: tests/test_kafka_tuning.py), never lowers them.
"""

from __future__ import annotations

import inspect

from faust.app import base as faust_app_base
from faust.assignor import partition_assignor
from faust.tables import recovery
from faust.transport import consumer as faust_consumer

from worker.handler import WorkerState
from worker.upstream.tuned_app import TunedConsumer, TunedConsumerThread


def _source(function) -> str:
    return inspect.getsource(function)


def test_assignment_pauses_every_partition_before_table_recovery_starts():
    source = _source(faust_app_base.App._on_partitions_assigned)
    pause = source.index("T(consumer.pause_partitions)(assigned)")
    assert pause < source.index("T(self.tables.on_rebalance)(")


def test_recovery_resumes_only_changelogs_until_they_are_read():
    restart = _source(recovery.Recovery._restart_recovery.fun)  # a mode ServiceTask
    resume = restart.index("T(consumer.resume_partitions)(active_tps)")
    assert resume < restart.index("await self._wait(self.signal_recovery_end.wait())")
    # active_tps holds changelog partitions only: those of a table's changelog topic.
    on_rebalance = _source(recovery.Recovery.on_rebalance)
    assert "table = self.tables._changelogs.get(tp.topic)" in on_rebalance
    assert "self.add_active(table, tp)" in on_rebalance
    for method in (recovery.Recovery.on_recovery_completed, recovery.Recovery._resume_streams):
        assert "{tp for tp in assignment if not self._is_changelog_tp(tp)}" in _source(method)
    # The stream partitions are resumed after the tables report their recovery complete.
    completed = _source(recovery.Recovery.on_recovery_completed)
    assert completed.index("table.on_recovery_completed(") < completed.index(
        "consumer.resume_partitions(")


def test_fetch_loop_delivers_only_active_partitions():
    source = _source(faust_consumer.Consumer.getmany)
    assert "or tp in active_partitions" in source
    assert "yield tp, to_message(tp, record)" in source
    pause = _source(faust_consumer.Consumer.pause_partitions)
    assert "self._get_active_partitions().difference_update(tpset)" in pause


def test_assignor_co_partitions_topics_of_equal_partition_count():
    source = _source(partition_assignor.PartitionAssignor._get_copartitioned_groups)
    assert "topics_by_partitions[num_partitions].add(topic)" in source


def _ours(cls: type) -> dict:
    """What the worker's classes (the fixes' mixins in worker/upstream/) define on `cls`."""
    defined: dict = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("worker."):
            defined.update(vars(klass))
    return defined


def test_our_consumer_overrides_nothing_of_pausing_or_choosing_records():
    decisive = {"getmany", "_wait_next_records", "pause_partitions", "resume_partitions",
                "_get_active_partitions", "on_partitions_assigned",
                "on_partitions_revoked", "_drain_messages", "_getmany"}
    assert decisive.isdisjoint(_ours(TunedConsumer))
    assert decisive.isdisjoint(_ours(TunedConsumerThread))
    methods = {name for name, value in _ours(TunedConsumer).items() if callable(value)
               and not name.startswith("__")}
    # perform_seek only stops the flow around Faust's own seek (tests/test_kafka_tuning.py);
    # force_commit only holds the exactly-once commit guard around Faust's own commit
    # (tests/test_exactly_once.py). A new override: re-check this list of guarantees.
    assert methods == {"_new_consumer_thread", "wait_first", "perform_seek", "force_commit"}
    thread_methods = {name for name, value in _ours(TunedConsumerThread).items()
                      if callable(value) and not name.startswith("__")}
    # seek_to_committed only adds a seek of stream partitions that have no committed offset to
    # their start (changelog partitions untouched; tests/test_kafka_tuning.py): which records
    # are read while recovering, and what is paused, stay Faust's. _fetch_records only seeks
    # back a fetch that returns while the flow is stopped, records Faust would drop unread
    # (worker/upstream/stale_fetch.py): they are fetched again, from the same positions.
    assert thread_methods == {"_create_worker_consumer", "_highwaters", "seek_to_committed",
                              "_fetch_records"}


def test_readiness_says_so_while_the_table_is_rebuilt():
    recovering = [True]
    state = WorkerState(compiled=True, assigned=True, recovering=lambda: recovering[0])
    assert state.readiness() == (False, "rebuilding the history table from its changelog")
    recovering[0] = False
    assert state.readiness() == (True, "ready")
    assert "self.in_recovery = True" in _source(recovery.Recovery._set_recovery_started)
    assert "self.app.in_recovery = False" in _source(recovery.Recovery._set_recovery_ended)


def test_readiness_says_why_start_up_waits_for_the_broker():
    state = WorkerState(compiled=True, broker_wait="broker h:1 not reachable (KafkaError)")
    assert state.readiness() == (False, "waiting for the broker: broker h:1 not reachable "
                                        "(KafkaError)")
    state.broker_wait = None
    assert state.readiness() == (False, "waiting for partition assignment")


def test_readiness_waits_for_the_streams_to_resume_after_a_rebalance():
    """Faust resumes flow control only after it resumed and sought the stream partitions, in
    both ends of a recovery: readiness waits for it (a stop in between interrupted Faust)."""
    resuming = [True]
    state = WorkerState(compiled=True, assigned=True, resuming=lambda: resuming[0])
    assert state.readiness() == (False,
                                 "rebalancing: waiting for the stream partitions to resume")
    resuming[0] = False
    assert state.readiness() == (True, "ready")
    for ending in (recovery.Recovery._resume_streams, recovery.Recovery.on_recovery_completed):
        source = _source(ending)
        steps = [source.index(step) for step in
                 ("consumer.resume_partitions(", "perform_seek()", "flow_control.resume()")]
        assert steps == sorted(steps), ending.__name__


def test_rocksdb_store_keeps_one_raw_rocksdict_per_partition_in_dbs():
    """worker.app reads RANKER_HISTORY_STORE=rocksdb tables from the decode thread through
    `Store._dbs` (Faust's own read path goes through a key index that is not thread-safe)."""
    from faust.stores import rocksdb as faust_rocksdb

    assert faust_rocksdb.USE_ROCKSDICT  # rocksdict is installed (pyproject.toml)
    opened = _source(faust_rocksdb.Store._db_for_partition)
    assert "db = self._dbs[partition] = self._open_for_partition(partition)" in opened
    assert "Options(raw_mode=True)" in _source(faust_rocksdb.RocksDBOptions.as_options)
    assert "self._key_index[key]" in _source(faust_rocksdb.Store._get_bucket_for_key)


def test_memory_store_drops_keys_of_partitions_no_longer_owned_by_their_recorded_partition():
    """worker.app records each written user's partition in the memory store's key index, the
    one Faust fills for restored keys and empties of partitions no longer active."""
    from faust.stores import memory

    assert "self._key_partition[key] = event.message.partition" in _source(
        memory.Store._create_batch_iterator)
    completed = _source(memory.Store.on_recovery_completed)
    assert "for k, p in self._key_partition.items():" in completed
    assert "self.data.pop(k, None)" in completed
