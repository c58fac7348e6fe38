"""A hook on the first SIGTERM/SIGINT that Faust's worker receives.

Why: Faust's stop waits without bound (a stuck send, a broker gone, acks that never come);
the worker bounds it with a watchdog started on the first stop signal
(worker.lifecycle.BoundedStopWorker). Without a hook, that watchdog cannot be armed: mode's
`Worker` (Faust's worker's base) handles the signal in its private `_schedule_shutdown`, and
tells a repeated signal apart by its private `_signal_stop_time`. Pinned by
tests/test_kafka_tuning.py (`test_mode_worker_handles_stop_signals_in_schedule_shutdown`).

Upstream: drafted report: "mode: Worker has no public hook or timeout for the stop that a
signal starts; a stop that hangs (a producer flush against an unreachable broker) keeps the
process alive until SIGKILL. Proposal: a bound on Worker.stop after a signal (like
Service.shutdown_timeout), or an on_signal_received hook."
"""

from __future__ import annotations

import signal

import faust


class StopSignalHookWorker(faust.Worker):
    """Faust's worker calling `on_first_stop_signal(signum)` on the first stop signal."""

    def on_first_stop_signal(self, signum: signal.Signals) -> None:
        """Called once, before Faust schedules the stop; does nothing here."""

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if not self._signal_stop_time:
            self.on_first_stop_signal(signum)
        super()._schedule_shutdown(signum)
