import pytest

from worker.breaker import BreakerConfig, DeadLetterBreaker


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def test_stays_closed_below_threshold(clock):
    breaker = DeadLetterBreaker(BreakerConfig(window=10, threshold=0.5, min_messages=10), clock)
    assert not breaker.record([True] * 5 + [False] * 5)  # exactly 50%: not more than
    assert not breaker.is_open and breaker.seconds_until_retry() == 0


def test_opens_above_threshold_and_says_why(clock):
    breaker = DeadLetterBreaker(BreakerConfig(window=10, threshold=0.5, min_messages=10,
                                              cooldown_s=30), clock)
    assert breaker.record([True] * 6 + [False] * 4)
    assert breaker.is_open
    assert "60% of the last 10 messages" in breaker.reason
    assert breaker.seconds_until_retry() == pytest.approx(30)


def test_needs_min_messages_before_judging(clock):
    breaker = DeadLetterBreaker(BreakerConfig(window=100, threshold=0.5, min_messages=20), clock)
    assert not breaker.record([True] * 19)
    assert breaker.record([True])


def test_half_open_trial_closes_or_reopens(clock):
    breaker = DeadLetterBreaker(BreakerConfig(window=10, threshold=0.5, min_messages=10,
                                              cooldown_s=30), clock)
    breaker.record([True] * 10)
    clock.now += 31
    assert breaker.seconds_until_retry() == 0
    assert breaker.record([True, True, False])  # trial fails: open again, timer restarts
    assert breaker.seconds_until_retry() == pytest.approx(30)
    clock.now += 31
    assert not breaker.record([False, False, True])  # trial healthy: closed, history cleared
    assert not breaker.is_open and breaker.failure_share() == pytest.approx(1 / 3)


def test_old_failures_slide_out_of_the_window(clock):
    breaker = DeadLetterBreaker(BreakerConfig(window=10, threshold=0.5, min_messages=10), clock)
    breaker.record([True] * 5)
    breaker.record([False] * 10)
    assert breaker.failure_share() == 0.0
