"""Connection options for every Kafka client the project opens, from the one settings object.

aiokafka clients take `client_kwargs` (the tools through `tools.kafka_io.connection`); the Faust
app takes `faust_credentials`. Also: topic creation with retry, and the exactly-once probe.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from worker.errors import BrokerUnavailableError
from worker.settings import Settings, SettingsError
from worker.topics import TopicError, ensure_topics

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
                                   first_delay_s: float = 0.5,
                                   max_delay_s: float = 10.0) -> dict[str, int]:
    """Creates the topics (explicit partition counts), waiting for the broker with
    exponential back-off, and returns name -> partitions. `attempts` 0 = until it answers.

    The engagement topic gets the request topic's partition count, whatever it is: the two
    must be co-partitioned (a user's engagements and requests on the same partition number).
    One that exists with another count is a `SettingsError`."""
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
            counts.update(await _ensure_copartitioned(
                settings, counts[settings.requests_topic], options))
            log.info("topics: %s", ", ".join(f"{n}[{c}]" for n, c in counts.items()))
            return counts
        except (KafkaConnectionError, KafkaError, OSError, asyncio.TimeoutError) as exc:
            if attempts and attempt >= attempts:
                raise BrokerUnavailableError(
                    f"broker {settings.bootstrap_servers} still unreachable after {attempt} "
                    f"attempts ({exc!r}); check RANKER_BROKER and that Kafka is up") from exc
            log.warning("broker %s not reachable (%s: %s); retrying in %.1f s (attempt %d)",
                        settings.bootstrap_servers, type(exc).__name__, exc, delay, attempt)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def _ensure_copartitioned(settings: Settings, partitions: int,
                                options: dict[str, Any]) -> dict[str, int]:
    try:
        return await ensure_topics(settings.bootstrap_servers,
                                   {settings.engagements_topic: partitions}, **options)
    except TopicError as error:
        raise SettingsError(
            f"RANKER_ENGAGEMENTS_TOPIC / --engagements-topic: {error} The engagement topic must "
            f"have the request topic {settings.requests_topic!r}'s {partitions} partitions "
            "(a user's engagements and requests must reach the same worker)") from None


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
