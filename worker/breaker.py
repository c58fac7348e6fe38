"""The dead-letter circuit breaker: stop consuming when most recent messages fail.

A producer deployed with a wrong schema, or a broken checkpoint, would otherwise turn the whole
request stream into dead letters. When more than `threshold` of the last `window` messages
failed, the breaker opens: the agent stops taking records (they stay uncommitted in Kafka),
the worker reports unready and logs why. After `cooldown_s` it lets one batch through
(half-open); a healthy batch closes it, a failing one opens it again.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class BreakerConfig:
    window: int = 200  # recent messages considered
    threshold: float = 0.5  # failing share that opens the breaker
    cooldown_s: float = 30.0  # wait before trying again
    min_messages: int = 50  # never judge on fewer messages than this


class DeadLetterBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._recent: collections.deque[bool] = collections.deque(maxlen=config.window)
        self._opened_at: float | None = None
        self.reason = ""

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def failure_share(self) -> float:
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def record(self, failures: Iterable[bool]) -> bool:
        """Adds one batch's outcomes (True = dead-lettered). Returns True if it just opened."""
        batch = list(failures)
        if self.is_open:  # half-open trial batch: judge it alone
            if batch and sum(batch) / len(batch) > self.config.threshold:
                self._opened_at = self._clock()
                return True
            self._opened_at, self.reason = None, ""
            self._recent.clear()
        self._recent.extend(batch)
        if len(self._recent) >= min(self.config.min_messages, self.config.window) and \
                self.failure_share() > self.config.threshold:
            share = self.failure_share()
            self._opened_at = self._clock()
            self.reason = (f"{share:.0%} of the last {len(self._recent)} messages were "
                           f"dead-lettered (threshold {self.config.threshold:.0%}): check the "
                           "producers' schema and the model checkpoint; consumption paused")
            return True
        return False

    def seconds_until_retry(self) -> float:
        """0 when records may be taken (closed, or cooled down to half-open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown_s - self._clock())
