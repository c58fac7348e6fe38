"""The producer buffer (where Faust's table writes wait to be sent), drained before a commit
(a correctness fix under exactly-once: a table write missing its offset's transaction).

What breaks without it: Faust buffers changelog writes and sends them in the background; a
commit did not wait for that buffer, so an engagement's offset could be committed in one
transaction and its table write sent in the next (killed before that one committed, the
engagement was lost: seen once in 600 under two SIGKILLs). Faust's own `ProducerBuffer.flush`
is no help: it gives up after 0.1 s without a send, and returns while the background task still
sends the last message it took. `DrainableProducerBuffer.drain` waits until the background
task has handed every buffered write to its transaction and finished its send in progress; it
follows those by wrapping Faust's private `ProducerBuffer._send_pending` (which the background
task calls). It never sends itself: a second sender beside the background task reorders the
writes of one key in the changelog, and the last one there is the value a recovery keeps (a
survivor once rebuilt a user one engagement short that way). Pinned by
tests/test_exactly_once.py.

Upstream: drafted report: "faust-streaming: ProducerBuffer.flush() returns after 0.1 s
without a send even if messages are still queued, and does not wait for the send the
background task is making; under exactly_once, Consumer.commit therefore can commit offsets
whose changelog writes land in the next transaction (or none, after a crash). Proposal: a
flush that drains the queue and awaits in-progress sends, called before committing."
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.producer import ProducerBuffer


class DrainableProducerBuffer(ProducerBuffer):
    """Faust's producer buffer (where table writes wait to be sent), plus `drain()`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._sending = 0  # sends in progress (the background task's: one at a time)
        self._progress = asyncio.Event()  # set after each send

    async def _send_pending(self, fut: Any) -> None:
        self._sending += 1
        try:
            await super()._send_pending(fut)
        finally:
            self._sending -= 1
            self._progress.set()

    async def drain(self) -> None:
        """Returns once every message buffered before the call was handed to the producer
        (under exactly-once: appended to its transaction), in the order they were buffered:
        waits while the background task sends them, one after another."""
        while self.pending.qsize() or self._sending:
            self._progress.clear()
            await self._progress.wait()


class DrainableBufferProducer:
    """Mixin for Faust's aiokafka `Producer`: its buffer is a `DrainableProducerBuffer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        faust_buffer = self.buffer  # made in Producer.__init__, started in on_start
        self.buffer = DrainableProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = faust_buffer.app
        if hasattr(faust_buffer, "threaded_producer"):
            self.buffer.threaded_producer = faust_buffer.threaded_producer
