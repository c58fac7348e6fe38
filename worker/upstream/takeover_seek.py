"""The seek after a rebalance: with the consumer's flow stopped, and partitions without a
committed offset sent to their first offset (a correctness fix: lost requests).

What breaks without it, 1 (flow): with a table, Faust 0.15.3's recovery resumes the flow
*before* it resumes the stream partitions and seeks them (without tables it seeks first). The
fetch loop can then deliver records of a batch fetched from the old position after the seek
reset the read offset: Faust takes the jump for a gap, counts the skipped offsets as acked (so
they are committed), and drops them as already read when they are fetched again: lost
requests after a rebalance under load. With the flow stopped, the fetch loop drops that stale
batch instead (Faust's own `if not self.flow_active: break`) and fetches again from the
committed offsets once the flow is back (`FlowStoppedSeekConsumer.perform_seek`).

What breaks without it, 2 (uncommitted partitions): aiokafka's `seek_to_committed` moves only
partitions with a committed offset > 0, so a partition with none stays where the fetcher is,
past the batch just dropped. Seen on Apache Kafka: a worker that took over partitions whose
owner was killed before its first commit skipped every request it had fetched before the seek.
`SeekUncommittedThread.seek_to_committed` puts those where the reset policy (earliest) says,
through the consumer thread's private `_ensure_consumer`.

Pinned by tests/test_kafka_tuning.py ("the seek after a rebalance") and
tests/test_history_recovery.py.

Upstream: drafted report: "faust-streaming: with tables, Recovery._restart_recovery resumes
the consumer flow before on_recovery_completed resumes and seeks the stream partitions; a
batch fetched from the old position is then delivered after the seek, read as a gap
(_add_gap acks the skipped offsets) and the re-fetched records are dropped as already read.
Records are lost on rebalance under load. Also, partitions with no committed offset are not
moved by perform_seek. Proposal: seek with flow stopped, and reset uncommitted partitions per
auto_offset_reset."
"""

from __future__ import annotations

from collections.abc import Mapping

import aiokafka
from faust.types import TP


class SeekUncommittedThread:
    """Mixin for Faust's `AIOKafkaConsumerThread`: `seek_to_committed` also seeks stream
    partitions with no committed offset (or 0) to their first offset."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek to committed offsets, then stream partitions with none (or 0) to their
        first offset, as the worker's reset policy (earliest) says. Changelog partitions are
        left alone: table recovery positions them itself."""
        committed = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        # aiokafka seeks only offsets > 0: None (nothing committed) and 0 both stay put.
        uncommitted = [tp for tp, offset in committed.items()
                       if not offset and tp.topic not in changelogs]
        if uncommitted:
            # Concrete offsets, not aiokafka's seek_to_beginning: that leaves a partition
            # "awaiting reset" with no position, which Faust's livelock check reads (and
            # asserts on) until the fetcher resolves it.
            earliest = await self.earliest_offsets(*uncommitted)
            await self.call_thread(_seek_each, self._ensure_consumer(), earliest)
        return committed


async def _seek_each(consumer: aiokafka.AIOKafkaConsumer, offsets: Mapping[TP, int]) -> None:
    """Each partition to its offset (run on the consumer's thread, where it lives)."""
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)


class FlowStoppedSeekConsumer:
    """Mixin for Faust's `Consumer`: `perform_seek` with the flow stopped while it runs."""

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset, with the consumer's flow
        stopped while it runs (see the module doc)."""
        if not self.flow_active:  # already stopped (a rebalance, or getmany's own seek)
            return await super().perform_seek()
        generation = self.app.consumer_generation_id
        self.stop_flow()
        try:
            await super().perform_seek()
        finally:
            # Resume only what we stopped: not if a new rebalance began meanwhile.
            if not self.app.rebalancing and self.app.consumer_generation_id == generation:
                self.resume_flow()
