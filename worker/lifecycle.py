"""How the worker process ends: a bounded stop on SIGTERM/SIGINT, and a stop (not an agent
restart) when the batch step hits a bug. Knows Faust's worker, nothing of batches or tensors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

import faust

log = logging.getLogger("worker")

STOP_DEADLINE_S = 8.0  # under the 10 s that orchestrators commonly give before SIGKILL


class BoundedStopWorker(faust.Worker):
    """Faust's worker with a bounded stop: a watchdog ends the process `STOP_DEADLINE_S` after
    the first SIGTERM/SIGINT whatever the stop waits on (a stuck send, a broker gone, Faust
    waiting for acks that will never come). What was answered is committed every
    `broker_commit_interval` before that, so at worst the last moment is delivered again."""

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(STOP_DEADLINE_S, _exit_now, args=(signum,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signum)


def _exit_now(signum: signal.Signals) -> None:
    log.error("the worker did not stop within %.0f s of %s; exiting now (records not yet "
              "committed are delivered again)", STOP_DEADLINE_S, signal.Signals(signum).name)
    logging.shutdown()
    os._exit(1)


def stop_for_bug(error: BaseException) -> None:
    """The batch step never raises on input or broker trouble, so `error` is a bug. Restarting
    the agent (Faust's default) would go on acking later records while the failed batch stays
    unanswered, and Faust then commits past the gap; instead the worker stops (SIGTERM to
    itself: the bounded stop) and a restart redelivers from the last commit."""
    log.critical("the ranking agent failed (a bug); stopping the worker so that nothing is "
                 "committed past the unanswered batch", exc_info=error)
    os.kill(os.getpid(), signal.SIGTERM)


class StartupStop(BaseException):
    """SIGINT or SIGTERM before the worker serves (model load, compile, waiting for the
    broker): nothing was consumed, so the stop is immediate. A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


class StartupSignals:
    """The stop signal received during start-up, if any. Its handler raises `StartupStop`
    wherever the main thread is, and Python swallows an exception raised inside a gc
    callback (JAX registers one) or a `__del__` (it goes to `sys.unraisablehook`): `check`,
    called between start-up steps, raises it again so that a stop is never lost."""

    def __init__(self) -> None:
        self.received: int | None = None

    def check(self) -> None:
        """Raises `StartupStop` if SIGINT or SIGTERM came."""
        if self.received is not None:
            raise StartupStop(self.received)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StartupSignals]:
    """Within the block, SIGINT and SIGTERM raise `StartupStop` (no KeyboardInterrupt
    traceback, and SIGTERM stops the process the same way) and are recorded for
    `StartupSignals.check`. Previous handlers come back on exit, so the serving stage's own
    handlers (Faust's) take over from there."""
    signals = StartupSignals()

    def raise_stop(signum: int, _frame: object) -> None:
        signals.received = signum
        raise StartupStop(signum)

    def quiet_if_stop(unraisable: "sys.UnraisableHookArgs") -> None:
        # A swallowed stop prints no "Exception ignored" trace: `check` raises it again.
        if not isinstance(unraisable.exc_value, StartupStop):
            previous_hook(unraisable)

    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, quiet_if_stop
    try:
        yield signals
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
