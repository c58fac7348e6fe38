"""The Faust app, transport, consumer and producer that carry the fixes of this package.

Each class is Faust's own with the fixes' mixins in front (each mixin's module says what it
fixes); `TunedApp` installs the transport through Faust's private `App._new_transport` hook
(the one `App.transport` calls, once, lazily), and `TunedConsumer` its thread through
`Consumer._new_consumer_thread`. Pinned by tests/test_kafka_tuning.py
(`test_faust_hooks_used_to_install_the_tuned_classes_are_unchanged`).

    app = TunedApp("ranking-worker", broker="kafka://127.0.0.1:9092",
                   consumer_tuning=ConsumerTuning(fetch_max_wait_ms=10), ...)
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport import by_url as transport_by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from worker.upstream.changelog_end_offsets import FetchedEndsThread
from worker.upstream.exactly_once_commit import ExactlyOnceTransactions, GuardedCommitConsumer
from worker.upstream.fetch_wait import ConsumerTuning, FetchWaitThread
from worker.upstream.idempotent_producer import IdempotentOptionsProducer
from worker.upstream.inline_delivery import InlineDeliveryConsumer
from worker.upstream.producer_buffer_drain import DrainableBufferProducer
from worker.upstream.producer_id_reset import ProducerIdReset
from worker.upstream.stale_fetch import RewindStaleFetchThread
from worker.upstream.takeover_seek import FlowStoppedSeekConsumer, SeekUncommittedThread
from worker.upstream.thread_loop import SameLoopKindThread
from worker.upstream.versions import KafkaTuningError, check_versions

check_versions()


class TunedConsumerThread(FetchWaitThread, SameLoopKindThread, SeekUncommittedThread,
                          FetchedEndsThread, RewindStaleFetchThread,
                          faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread: tuned fetch wait, a loop of the app's kind, the takeover
    seek of uncommitted partitions, the changelog ends table recovery reads to, and a fetch
    returned while the flow is stopped put back."""


class TunedConsumer(InlineDeliveryConsumer, FlowStoppedSeekConsumer, GuardedCommitConsumer,
                    faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: the tuned thread, inline delivery, the seek with the flow
    stopped, and (under exactly-once) commits held by the commit guard."""

    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class IdempotentProducer(DrainableBufferProducer, IdempotentOptionsProducer, ProducerIdReset,
                         faust_aiokafka.Producer):
    """Faust's producer: idempotent (and acks=all) when the app says its broker takes it, a
    buffer that can be drained before a commit, and a producer id that can be reset."""


class TunedTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport carrying a `ConsumerTuning` for its consumer, and the
    exactly-once fixes."""

    Consumer = TunedConsumer
    Producer = IdempotentProducer
    TransactionManager = ExactlyOnceTransactions

    def __init__(self, *args: Any, consumer_tuning: ConsumerTuning, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumer_tuning = consumer_tuning


class TunedApp(faust.App):
    """A `faust.App` whose Kafka clients carry the fixes; otherwise plain Faust.

    The broker URL keeps Faust's own schemes (`kafka://`, `aiokafka://`); other transports
    (e.g. `confluent://`) are refused because the fixes would silently not apply.
    """

    def __init__(
        self, id: str, *, consumer_tuning: ConsumerTuning | None = None,
        idempotent_producer: bool = False, **options: Any
    ) -> None:
        check_versions()  # again here: an import-time check can be bypassed by reloads/patching
        self.consumer_tuning = consumer_tuning if consumer_tuning is not None else ConsumerTuning()
        self.idempotent_producer = idempotent_producer
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        # Faust's own hook for the consumer transport (App.transport calls it once, lazily).
        urls = self.conf.broker_consumer
        driver = transport_by_url(urls[0])
        if not (isinstance(driver, type) and issubclass(driver, faust_aiokafka.Transport)):
            raise KafkaTuningError(
                f"Broker URL {str(urls[0])!r} selects transport {driver!r}, which is not Faust's "
                "aiokafka driver, so the consumer tuning cannot apply; use kafka://host:port."
            )
        return TunedTransport(urls, self, consumer_tuning=self.consumer_tuning)
