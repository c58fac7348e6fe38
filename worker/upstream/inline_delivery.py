"""Inline delivery of fetched records while the consumer's flow is active.

What breaks without it (throughput, not correctness): Faust's fetch loop
(`Consumer._drain_messages`) hands each message to the conductor as
`await self.wait_first(callback(message), self.suspend_flow.wait())`, which creates four tasks
and an `asyncio.wait` per message so that a flow suspension (a rebalance) can interrupt a
delivery blocked on a full stream buffer. While flow is active, a delivery almost never
blocks, so `InlineDeliveryConsumer.wait_first` runs it inline first; only when it does block
(full buffer, producer back-pressure, flow control) is the rest handed to Faust's own
`wait_first`, so suspension interrupts it exactly as before.

Internals used: the fetch loop's call is recognised by inspecting the frame of the
not-yet-started `suspend_flow.wait()` coroutine (`cr_code`, `cr_frame.f_locals`), and a
delivery resumed after it blocked clears asyncio's private `_asyncio_future_blocking` on the
future it yielded, as an asyncio Task does before waiting on it. Pinned by
tests/test_kafka_tuning.py ("inline delivery").

Upstream: drafted report: "faust-streaming: Consumer._drain_messages awaits
wait_first(callback(message), suspend_flow.wait()) per message; mode's wait_first wraps both
in tasks and runs asyncio.wait, ~4 tasks per record, a large share of a consumer's CPU at
10k records/s. Proposal: deliver directly while flow is active and fall back to wait_first
only when the delivery suspends (or check suspend_flow between messages)."
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from mode.services import WaitResults


class InlineDeliveryConsumer:
    """Mixin for Faust's `Consumer`: `wait_first` runs a fetch-loop delivery inline first."""

    # Deliveries that finished inline / that blocked and went through Faust's wait_first.
    inline_deliveries = 0
    waited_deliveries = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if not _is_delivery(coros, self.suspend_flow) or self.suspend_flow.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        delivery, suspended = coros
        suspended.close()  # never started: only the slow path below waits on suspension
        try:
            awaited = delivery.send(None)  # runs until its first real suspension, if any
        except StopIteration as finished:
            self.inline_deliveries += 1
            return WaitResults([delivery], [finished.value], False)
        self.waited_deliveries += 1
        return await super().wait_first(_resume(delivery, awaited), self.suspend_flow.wait(),
                                        timeout=timeout)


_EVENT_WAIT_CODE = asyncio.Event.wait.__code__  # Faust's Consumer.suspend_flow is one


def _is_delivery(coros: tuple, suspend_flow: asyncio.Event) -> bool:
    """Whether `wait_first` was called as the fetch loop calls it: (a delivery coroutine,
    `suspend_flow.wait()` not yet started)."""
    if len(coros) != 2 or not all(isinstance(c, Coroutine) for c in coros):
        return False
    wait = coros[1]
    return (getattr(wait, "cr_code", None) is _EVENT_WAIT_CODE and wait.cr_frame is not None
            and wait.cr_frame.f_locals.get("self") is suspend_flow)


async def _resume(coro: Coroutine, awaited: Any) -> Any:
    """Drive `coro`, suspended on `awaited` (what its last `send` yielded), to the end, as
    an asyncio Task would: wait for that future, resume the coroutine, repeat."""
    try:
        while True:
            if awaited is None:  # a bare yield (asyncio.sleep(0)): just give way once
                await asyncio.sleep(0)
            else:
                awaited._asyncio_future_blocking = False  # we are its waiter now
                try:
                    await asyncio.wait([awaited])
                except asyncio.CancelledError:
                    awaited.cancel()
                    coro.close()  # unwinds its `finally` blocks (e.g. a queue's putter)
                    raise
            awaited = coro.send(None)
    except StopIteration as finished:
        return finished.value
