"""Connection options for every Kafka client the project opens, from the one settings object.

aiokafka clients (producer tool, replay, results viewer, admin) take `client_kwargs`; the Faust
app takes `faust_credentials`. Also: topic creation with retry, and the exactly-once probe.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from worker.errors import BrokerUnavailableError
from worker.settings import Settings, SettingsError
from worker.topics import ensure_topics

log = logging.getLogger(__name__)


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return create_ssl_context(cafile=settings.ssl_cafile or None,
                              certfile=settings.ssl_certfile or None,
                              keyfile=settings.ssl_keyfile or None)


def client_kwargs(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """aiokafka connection arguments: bootstrap servers, TLS, SASL."""
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap or settings.bootstrap_servers,
                              "security_protocol": settings.security_protocol}
    context = _ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=settings.sasl_mechanism,
                      sasl_plain_username=settings.sasl_username,
                      sasl_plain_password=settings.sasl_password)
    return kwargs


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same security settings in Faust's terms (None for PLAINTEXT)."""
    context = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.sasl_username,
                                     password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def ensure_topics_with_retry(settings: Settings, *, attempts: int = 0,
                                   first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
    """Creates the three topics (explicit partition counts), waiting for the broker with
    exponential back-off. `attempts` 0 = until it answers."""
    topics = {settings.requests_topic: settings.partitions,
              settings.results_topic: settings.partitions,
              settings.dead_letter_topic: settings.partitions}
    delay, attempt = first_delay_s, 0
    options = {k: v for k, v in client_kwargs(settings).items() if k != "bootstrap_servers"}
    while True:
        attempt += 1
        try:
            counts = await ensure_topics(settings.bootstrap_servers, topics, strict=False,
                                         **options)
            log.info("topics: %s", ", ".join(f"{n}[{c}]" for n, c in counts.items()))
            return
        except (KafkaConnectionError, KafkaError, OSError, asyncio.TimeoutError) as exc:
            if attempts and attempt >= attempts:
                raise BrokerUnavailableError(
                    f"broker {settings.bootstrap_servers} still unreachable after {attempt} "
                    f"attempts ({exc!r}); check RANKER_BROKER and that Kafka is up") from exc
            log.warning("broker %s not reachable (%s: %s); retrying in %.1f s (attempt %d)",
                        settings.bootstrap_servers, type(exc).__name__, exc, delay, attempt)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def check_transactions_supported(settings: Settings) -> None:
    """exactly_once needs transactional producers; fail fast and clearly when the broker
    refuses them (the embedded broker does), instead of Faust's bare UnknownError later."""
    producer = AIOKafkaProducer(transactional_id=f"{settings.group_id}-eos-probe",
                                request_timeout_ms=10_000, **client_kwargs(settings))
    try:
        await producer.start()
    except KafkaError as exc:
        raise SettingsError(
            f"processing_guarantee=exactly_once, but broker {settings.bootstrap_servers} "
            f"refused a transactional producer ({type(exc).__name__}: {exc}). Use a broker "
            "with transactions (Apache Kafka) or set RANKER_PROCESSING_GUARANTEE="
            "at_least_once (results carry request ids, so duplicates can be dropped)") from exc
    finally:
        await producer.stop()


class TopicFollower:
    """Reads whole topics from the beginning in a background task (manual assignment, no
    group, no commits) and hands each fetch to `on_records(records, arrived_ms)`. Subclass
    and override `on_records`; use as `async with`."""

    def __init__(self, bootstrap: str, topics: list[str], fetch_max_wait_ms: int = 10,
                 poll_ms: int = 100):
        self.bootstrap, self.topics = bootstrap, list(topics)
        self.fetch_max_wait_ms, self.poll_ms = fetch_max_wait_ms, poll_ms
        self._task: asyncio.Task | None = None

    def on_records(self, records: list, arrived_ms: float) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> "TopicFollower":
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=self.fetch_max_wait_ms)
        await consumer.start()
        try:
            await consumer.topics()  # all topics: naming one could auto-create it
            partitions = [TopicPartition(t, p) for t in self.topics
                          for p in sorted(consumer.partitions_for_topic(t) or ())]
            if not partitions:
                raise SettingsError(f"none of the topics {self.topics} exists on "
                                    f"{self.bootstrap}; create them first")
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._task = asyncio.create_task(self._run(consumer))
        return self

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=self.poll_ms)
                if batch:
                    arrived = time.time() * 1000.0  # every record of this fetch arrived now
                    self.on_records([r for rs in batch.values() for r in rs], arrived)
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
