"""When each message of a paced stream is due: shared by every sender, to Kafka or to a file."""

from __future__ import annotations

import math

from worker.errors import WorkerError


class PaceError(WorkerError):
    """A pace that cannot be kept (a negative rate, a rate and the recorded pace at once)."""


class Pace:
    """When each message is due, in seconds after the first send (pure; the sender sleeps).

    `rate` > 0: evenly spaced at `rate` per second. `recorded`: the gaps between the messages'
    recorded timestamps, so a recorded burst stays a burst. Neither: as fast as acks allow. A
    timestamp earlier than the first (files interleave partitions) is due at once, never
    reordered.
    """

    def __init__(self, rate: float = 0.0, recorded: bool = False) -> None:
        if rate < 0 or not math.isfinite(rate):
            raise PaceError(f"rate must be a finite number >= 0 (0 = unpaced), got {rate}")
        if rate > 0 and recorded:
            raise PaceError("pass either a rate or the recorded pace, not both")
        self.rate = rate
        self.recorded = recorded
        self._index = 0
        self._first_ts: int | None = None

    def due_s(self, recorded_ms: int | None = None) -> float:
        index, self._index = self._index, self._index + 1
        if self.rate > 0:
            return index / self.rate
        if self.recorded:
            if recorded_ms is None:
                raise PaceError("the recorded pace needs each message's timestamp")
            if self._first_ts is None:
                self._first_ts = recorded_ms
            return max(0.0, (recorded_ms - self._first_ts) / 1000.0)
        return 0.0
