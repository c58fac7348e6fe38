"""The consumer's fetch wait, which Faust 0.15.3 hard-codes to 1500 ms.

What breaks without it: Faust's aiokafka driver builds its worker consumer with
`fetch_max_wait_ms=1500` (`AIOKafkaConsumerThread._create_worker_consumer`), whatever the app
is configured with. The embedded tansu broker answers a fetch long-poll by re-checking after
half the remaining wait instead of waking when data arrives, so that constant makes one Faust
hop cost ~400 ms p50 there; at 10 ms it is ~8 ms. Real Kafka wakes on data, where a small wait
only costs a few more idle fetches.

How: `FetchWaitThread` lets Faust build the consumer exactly as it always does and then
replaces the fetch wait before the consumer starts (aiokafka builds its fetcher from the
private `_fetch_max_wait_ms` in `start()`). Nothing else of Faust's consumer configuration is
copied or changed. Pinned by tests/test_kafka_tuning.py (the "pin" group).

Upstream: drafted report: "faust-streaming: AIOKafkaConsumerThread._create_worker_consumer
passes fetch_max_wait_ms=1500 to aiokafka.AIOKafkaConsumer instead of reading a setting, so
an app cannot lower its idle-to-first-record latency (or raise it). Proposal: a
`consumer_fetch_max_wait` setting (seconds, default 1.5) passed through as
fetch_max_wait_ms, as `consumer_max_fetch_size` already is."
"""

from __future__ import annotations

import dataclasses
from typing import Any

import aiokafka

from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS
from worker.upstream.versions import UPGRADE_HINT, KafkaTuningError, check_versions

check_versions()

# The value Faust 0.15.3 hard-codes; the pin test checks it is still there (if Faust starts
# honouring a setting, this module should go).
FAUST_HARDCODED_FETCH_MAX_WAIT_MS = 1500
# aiokafka.AIOKafkaConsumer keeps the constructor argument here until start() builds the Fetcher.
_AIOKAFKA_FETCH_WAIT_ATTR = "_fetch_max_wait_ms"


@dataclasses.dataclass(frozen=True)
class ConsumerTuning:
    # Longest time (ms) a fetch waits at the broker for data before returning empty. Bounds the
    # idle-to-first-record latency on tansu; Faust 0.15.3 alone would use 1500.
    fetch_max_wait_ms: int = EMBEDDED_BROKER_FETCH_WAIT_MS

    def __post_init__(self) -> None:
        if isinstance(self.fetch_max_wait_ms, bool) or not isinstance(self.fetch_max_wait_ms, int):
            raise KafkaTuningError(
                f"fetch_max_wait_ms must be an int number of milliseconds, got "
                f"{self.fetch_max_wait_ms!r}; pass e.g. {EMBEDDED_BROKER_FETCH_WAIT_MS}."
            )
        if not 1 <= self.fetch_max_wait_ms <= 60_000:
            raise KafkaTuningError(
                f"fetch_max_wait_ms={self.fetch_max_wait_ms} is outside 1..60000 ms; 0 would "
                "busy-poll the broker. Use 10-50 ms on tansu, up to 500 ms on real Kafka."
            )


def apply_tuning(consumer: aiokafka.AIOKafkaConsumer, tuning: ConsumerTuning) -> None:
    """Set the tuned values on a consumer that has not been started yet."""
    if getattr(consumer, "_fetcher", None) is not None:
        raise KafkaTuningError(
            "The aiokafka consumer has already started, so its fetch wait is fixed; apply the "
            "tuning between construction and start()."
        )
    if not hasattr(consumer, _AIOKAFKA_FETCH_WAIT_ATTR):
        raise KafkaTuningError(
            f"aiokafka.AIOKafkaConsumer has no {_AIOKAFKA_FETCH_WAIT_ATTR!r} attribute any more. "
            + UPGRADE_HINT
        )
    setattr(consumer, _AIOKAFKA_FETCH_WAIT_ATTR, tuning.fetch_max_wait_ms)


def tuning_of(transport: Any) -> ConsumerTuning:
    """The `ConsumerTuning` a transport carries (worker.upstream.tuned_app.TunedTransport)."""
    tuning = getattr(transport, "consumer_tuning", None)
    if not isinstance(tuning, ConsumerTuning):
        raise KafkaTuningError(
            f"TunedConsumerThread needs a TunedTransport, got {type(transport).__name__}; "
            "create the app with worker.upstream.tuned_app.TunedApp."
        )
    return tuning


class FetchWaitThread:
    """Mixin for Faust's `AIOKafkaConsumerThread`: its worker consumer gets the transport's
    `ConsumerTuning`."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        apply_tuning(consumer, tuning_of(transport))
        return consumer
