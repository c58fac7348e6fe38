"""The consumer thread's event loop, of the same kind as the app's.

What breaks without it: mode gives every `ServiceThread` a plain asyncio loop, whose
pure-Python selector transports cost Faust's fetch path more than uvloop's: a uvloop worker
still fetched on an asyncio loop. Setting mode's private `_close_thread_loop_on_stop` keeps
mode closing the loop after the thread's run, as it does for loops it made itself (otherwise
every stop leaks one loop and its selector). Pinned by tests/test_kafka_tuning.py
(`test_the_consumer_thread_runs_the_same_kind_of_loop_as_the_app`).

Upstream: drafted report: "mode: ServiceThread creates its thread loop with
asyncio.new_event_loop() unless given `thread_loop`, and then closes a given loop only if
`_close_thread_loop_on_stop` is set, which has no public setter. Faust's consumer thread thus
runs asyncio's loop under a uvloop app. Proposal: create the thread loop with the parent
loop's policy (or type), or let callers ask for the given loop to be closed."
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop


class SameLoopKindThread:
    """Mixin for mode's `ServiceThread` (Faust's consumer thread): a uvloop thread loop under
    a uvloop app, closed on stop as mode closes the loops it makes."""

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        uses_uvloop = isinstance(loop, uvloop.Loop)
        super().__init__(*args, loop=loop,
                         thread_loop=uvloop.new_event_loop() if uses_uvloop else None, **kwargs)
        # mode closes the thread's loop on stop only if it made the loop itself.
        self._close_thread_loop_on_stop = True
