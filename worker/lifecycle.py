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
from typing import Callable, Iterator

from worker.settings import SettingsError
from worker.upstream.stop_signal import StopSignalHookWorker

log = logging.getLogger("worker")

STOP_DEADLINE_S = 8.0  # under the 10 s that orchestrators commonly give before SIGKILL


class BoundedStopWorker(StopSignalHookWorker):
    """Faust's worker with a bounded stop: a watchdog ends the process `STOP_DEADLINE_S` after
    the first SIGTERM/SIGINT whatever the stop waits on (a stuck send, a broker gone, Faust
    waiting for acks that will never come). What was answered is committed every
    `broker_commit_interval` before that, so at worst the last moment is delivered again."""

    def on_first_stop_signal(self, signum: signal.Signals) -> None:
        _start_watchdog(_exit_now, signum)


def _start_watchdog(exit_now: Callable[[int], None], signum: int) -> None:
    """Calls `exit_now(signum)` `STOP_DEADLINE_S` from now, if the process still runs then."""
    timer = threading.Timer(STOP_DEADLINE_S, exit_now, args=(signum,))
    timer.daemon = True
    timer.start()


def _exit_now(signum: signal.Signals) -> None:
    log.error("the worker did not stop within %.0f s of %s; exiting now (records not yet "
              "committed are delivered again)", STOP_DEADLINE_S, signal.Signals(signum).name)
    failure = _stopped_for[0] if _stopped_for else None
    code = report_user_error(failure) if isinstance(failure, SettingsError) else 1
    logging.shutdown()
    os._exit(code)


def report_user_error(error: BaseException) -> int:
    """A setting, a checkpoint, a port, an ACL: one line naming what to change, no
    traceback; returns the exit code for it, 2."""
    print(f"worker: error: {error}", file=sys.stderr, flush=True)
    return 2


_stopped_for: list[BaseException] = []  # what `stop_for_bug` stopped the worker for


def stop_for_bug(error: BaseException) -> None:
    """The batch step never raises on input or broker trouble, so `error` is a bug (or a
    `SettingsError` it reports: a set-up that must change, such as a send refused inside a
    transaction, which nothing but a new transaction can follow). Restarting
    the agent (Faust's default) would go on acking later records while the failed batch stays
    unanswered, and Faust then commits past the gap; instead the worker stops (SIGTERM to
    itself: the bounded stop) and a restart redelivers from the last commit."""
    _stopped_for.append(error)
    if isinstance(error, SettingsError):  # not a bug: a set-up the operator must change
        log.error("%s; stopping the worker so that nothing is committed past the unanswered "
                  "batch", error)
    else:
        log.critical("the ranking agent failed (a bug); stopping the worker so that nothing "
                     "is committed past the unanswered batch", exc_info=error)
    os.kill(os.getpid(), signal.SIGTERM)


class StartupStop(BaseException):
    """SIGINT or SIGTERM before the worker serves (model load, compile, waiting for the
    broker): nothing was consumed, so the stop is immediate. A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


def log_stopped_before_serving(signal_name: str) -> None:
    log.info("stopped by %s before serving; nothing was consumed", signal_name)


class StartupSignals:
    """SIGINT or SIGTERM received during start-up. The handler (`receive`) only records it:
    an exception raised from a handler lands wherever the main thread is, and inside a
    library that can be swallowed (JAX's gc callback) or leak what the library was setting
    up (a JAX timer thread left running kept a stopped worker alive for a minute). Start-up
    calls `check` between its steps (between two compilations, every 0.25 s of the broker
    wait); a watchdog ends the process `STOP_DEADLINE_S` after the signal if no check came."""

    def __init__(self) -> None:
        self.received: int | None = None

    def receive(self, signum: int, _frame: object) -> None:
        if self.received is None:
            _start_watchdog(_exit_before_serving, signum)
        self.received = signum

    def check(self) -> None:
        """Raises `StartupStop` if SIGINT or SIGTERM came."""
        if self.received is not None:
            raise StartupStop(self.received)


def _exit_before_serving(signum: int) -> None:
    log_stopped_before_serving(f"{signal.Signals(signum).name} (start-up did not reach a stop "
                               f"point within {STOP_DEADLINE_S:g} s)")
    logging.shutdown()
    os._exit(0)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StartupSignals]:
    """Within the block, SIGINT and SIGTERM are recorded for `StartupSignals.check` (no
    KeyboardInterrupt traceback, and SIGTERM stops the process the same way); one that came
    and was not checked yet raises `StartupStop` on leaving the block. Previous handlers come
    back on exit, so the serving stage's own handlers (Faust's) take over from there."""
    signals = StartupSignals()
    previous = {sig: signal.signal(sig, signals.receive) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    signals.check()
