"""Connection options for every Kafka client the project opens, from the one settings object.

aiokafka clients take `client_kwargs` (the tools through `tools.kafka_io.connection`); the Faust
app takes `faust_client_options` (its clients' options, each declared once here). Also: topic
creation with retry, the diagnosis of a connection the broker refuses (credentials,
certificates), and the exactly-once probe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import ssl
from typing import Any, Callable

import faust
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.client import CoordinationType
from aiokafka.conn import create_conn
from aiokafka.errors import (GroupAuthorizationFailedError, KafkaConnectionError, KafkaError,
                             SaslAuthenticationFailed, TransactionalIdAuthorizationFailed)
from aiokafka.helpers import create_ssl_context

from worker import codec
from worker.errors import BrokerUnavailableError
from worker.settings import Settings, SettingsError
from worker.topics import TopicError, TopicSpec, cluster_size, ensure_topics

log = logging.getLogger(__name__)


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every client (None without TLS). A file that cannot be read or
    loaded is a `SettingsError` naming its setting."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{Settings.env_name(name)}: cannot read {path!r}")
    try:
        return create_ssl_context(cafile=settings.ssl_cafile or None,
                                  certfile=settings.ssl_certfile or None,
                                  keyfile=settings.ssl_keyfile or None,
                                  password=settings.ssl_key_password or None)
    except ssl.SSLError as error:
        raise SettingsError(
            f"the TLS files do not load ({error.reason or error}): RANKER_SSL_CAFILE must be "
            "PEM certificates; RANKER_SSL_CERTFILE and RANKER_SSL_KEYFILE a certificate and "
            "its key, RANKER_SSL_KEY_PASSWORD the key's passphrase if it has one") from None


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


def connection_options(settings: Settings) -> dict[str, Any]:
    """`client_kwargs` without the bootstrap servers (for clients given them apart)."""
    return {k: v for k, v in client_kwargs(settings).items() if k != "bootstrap_servers"}


# How often the worker commits. At least once: bounds re-deliveries after a crash. Exactly
# once: a result becomes visible to read_committed consumers when its transaction commits, so
# commit more often (Kafka Streams likewise drops commit.interval.ms to 100 ms under it).
AT_LEAST_ONCE_COMMIT_INTERVAL_S = 0.5
EXACTLY_ONCE_COMMIT_INTERVAL_S = 0.1
# Per-partition batch: Faust's 16 KiB holds ~5 results, so publishing one ranked batch of 64
# took several produce round trips; 256 KiB takes one (and stays far under the broker's 1 MiB
# record-batch limit).
PRODUCER_BATCH_BYTES = 256 * 1024
PRODUCER_REQUEST_TIMEOUT_S = 30.0  # a send during an outage fails and is retried by the worker
AUTO_OFFSET_RESET = "earliest"  # a partition with no committed offset is read from its start
_PROBE_TIMEOUT_MS = 10_000  # the start-up probes' producers (idempotence, transactions)


def faust_client_options(settings: Settings, replication_factor: int) -> dict[str, Any]:
    """The Faust app options that configure its Kafka clients and the topics it creates (the
    history changelog, with `replication_factor` replicas)."""
    return dict(
        broker=settings.faust_broker,
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=(EXACTLY_ONCE_COMMIT_INTERVAL_S
                                if settings.processing_guarantee == "exactly_once"
                                else AT_LEAST_ONCE_COMMIT_INTERVAL_S),
        consumer_auto_offset_reset=AUTO_OFFSET_RESET,
        producer_acks=-1,  # all in-sync replicas
        producer_compression_type=settings.producer_compression,
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
        producer_max_request_size=codec.publish_cap(settings.max_message_bytes),
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        processing_guarantee=settings.processing_guarantee,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=replication_factor,
    )


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


DEFAULT_REPLICAS = 3  # replicas per topic on a cluster of 3 or more brokers
MIN_IN_SYNC = 2  # with acks=all, a write survives the loss of one replica of three


@dataclasses.dataclass(frozen=True)
class TopicLayout:
    """What the worker's topics look like once they exist."""

    partitions: int  # the request topic's (the engagement topic's too)
    replication_factor: int  # of the topics the worker creates, and of Faust's changelog


def topic_config(settings: Settings, replication_factor: int) -> dict[str, str]:
    """Topic configs for every topic the worker creates.

    `max.message.bytes`: Kafka's default (1 MiB + 12) is below the worker's publish cap, so a
    dead letter carrying a request at the byte cap would be refused, and a request at the cap
    too. `min.insync.replicas`: with 3 replicas, an acknowledged write is on at least 2.
    """
    config = {"max.message.bytes": str(codec.publish_cap(settings.max_message_bytes))}
    if replication_factor >= DEFAULT_REPLICAS:
        config["min.insync.replicas"] = str(MIN_IN_SYNC)
    return config


async def replication_for(settings: Settings, options: dict[str, Any]) -> int:
    """The replication factor setting, or (0) 3 capped at the cluster's broker count."""
    if settings.replication_factor:
        return settings.replication_factor
    brokers = await cluster_size(settings.bootstrap_servers, **options)
    return max(1, min(DEFAULT_REPLICAS, brokers))


async def ensure_topics_with_retry(settings: Settings, *, attempts: int = 0,
                                   first_delay_s: float = 0.5, max_delay_s: float = 10.0,
                                   on_wait: Callable[[str | None], None] = lambda _: None,
                                   ) -> TopicLayout:
    """Creates the topics (explicit partition counts, replication and configs), waiting for
    the broker with exponential back-off. `attempts` 0 = until it answers.

    The engagement topic gets the request topic's partition count, whatever it is: the two
    must be co-partitioned (a user's engagements and requests on the same partition number).
    One that exists with another count is a `SettingsError`. `on_wait` hears why it waits
    before each retry, and None once the broker answered."""
    delay, attempt = first_delay_s, 0
    last_refusal, refusals = None, 0
    options = connection_options(settings)
    while True:
        attempt += 1
        try:
            replication = await replication_for(settings, options)
            config = topic_config(settings, replication)
            topics = [TopicSpec(name, settings.partitions, config)
                      for name in (settings.requests_topic, settings.results_topic,
                                   settings.dead_letter_topic)]
            counts = await ensure_topics(settings.bootstrap_servers, topics, strict=False,
                                         replication_factor=replication, **options)
            partitions = counts[settings.requests_topic]
            counts.update(await _ensure_copartitioned(
                settings, TopicSpec(settings.engagements_topic, partitions, config),
                replication, options))
            log.info("topics (%d replicas): %s", replication,
                     ", ".join(f"{n}[{c}]" for n, c in counts.items()))
            on_wait(None)
            return TopicLayout(partitions, replication)
        except TopicError as error:  # the broker answered: a set-up to fix, not to wait out
            raise SettingsError(f"{error}") from None
        except (KafkaConnectionError, KafkaError, OSError, asyncio.TimeoutError) as exc:
            refusal = await refused_access(settings)
            refusals = refusals + 1 if refusal is not None and refusal == last_refusal else 1
            if refusal is not None and (not refusal.retry or refusals >= _SAME_REFUSALS):
                raise SettingsError(refusal.message) from None
            last_refusal = refusal
            if attempts and attempt >= attempts:
                raise BrokerUnavailableError(
                    f"broker {settings.bootstrap_servers} still unreachable after {attempt} "
                    f"attempts ({exc!r}); check RANKER_BROKER and that Kafka is up") from exc
            log.warning("broker %s not reachable (%s: %s); retrying in %.1f s (attempt %d)",
                        settings.bootstrap_servers, type(exc).__name__, exc, delay, attempt)
            on_wait(refusal.message if refusal is not None else
                    f"broker {settings.bootstrap_servers} not reachable "
                    f"({type(exc).__name__}), attempt {attempt}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


_SAME_REFUSALS = 3  # closed connections in a row that stop the worker (seconds apart)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why the broker will not talk to this client, as one line naming what to fix."""

    message: str
    retry: bool = False  # a closed connection: also what a restarting broker may do, so it
    # stops the worker only when the next attempts meet it too


async def refused_access(settings: Settings, timeout_s: float = 10.0) -> Refusal | None:
    """Connects once to the first bootstrap server as the worker's clients do, and says why
    the broker refused it: the SASL credentials, the broker's certificate, or this client's
    (or the protocol). None when it connects, or does not answer at all (a broker away)."""
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    options = connection_options(settings)
    where = f"broker {host}:{port}"
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port), **options), timeout_s)
    except SaslAuthenticationFailed:
        return Refusal(
            f"authentication failed: {where} refused SASL user {settings.sasl_username!r} "
            f"({settings.sasl_mechanism}): a wrong password or an unknown user; check "
            "RANKER_SASL_USERNAME and RANKER_SASL_PASSWORD (or RANKER_SASL_PASSWORD_FILE)")
    except ssl.SSLCertVerificationError as error:
        return Refusal(
            f"TLS: {where}'s certificate is not trusted ({error.verify_message}): "
            "RANKER_SSL_CAFILE must hold the CA that signed it")
    except ssl.SSLError as error:
        return Refusal(f"TLS handshake with {where} failed ({error.reason or error}); check "
                       "RANKER_SECURITY_PROTOCOL and the RANKER_SSL_* settings")
    except KafkaConnectionError as error:
        if "closed" not in str(error):
            return None
        return Refusal(f"{where} closed the connection at once: {_closed_because(settings)}",
                       retry=True)
    except (OSError, asyncio.TimeoutError):
        return None
    conn.close()
    return None


def _closed_because(settings: Settings) -> str:
    if settings.security_protocol == "PLAINTEXT":
        return ("it may expect TLS or SASL (RANKER_SECURITY_PROTOCOL is PLAINTEXT), or "
                "not be a Kafka listener")
    if settings.ssl_certfile:
        return (f"it did not accept the client certificate RANKER_SSL_CERTFILE "
                f"({settings.ssl_certfile!r}): expired, or signed by a CA it does not trust")
    return ("it may require a client certificate (RANKER_SSL_CERTFILE and RANKER_SSL_KEYFILE) "
            f"or another protocol than {settings.security_protocol}")


async def _ensure_copartitioned(settings: Settings, spec: TopicSpec, replication: int,
                                options: dict[str, Any]) -> dict[str, int]:
    try:
        return await ensure_topics(settings.bootstrap_servers, [spec],
                                   replication_factor=replication, **options)
    except TopicError as error:
        raise SettingsError(
            f"RANKER_ENGAGEMENTS_TOPIC / --engagements-topic: {error} The engagement topic must "
            f"have the request topic {settings.requests_topic!r}'s {spec.partitions} partitions "
            "(a user's engagements and requests must reach the same worker)") from None


async def check_group_access(settings: Settings, timeout_s: float = 30.0) -> None:
    """A `SettingsError` naming the ACL when the broker will not let this client use its
    consumer group: without it the consumer would wait for its group coordinator forever,
    saying nothing. (Finding the coordinator needs Describe on the group, implied by the Read
    that joining and committing need.)"""
    client = AIOKafkaClient(**client_kwargs(settings))
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        await client.bootstrap()
        while True:
            try:
                await client.coordinator_lookup(CoordinationType.GROUP, settings.group_id)
                return
            except GroupAuthorizationFailedError:
                raise SettingsError(
                    f"broker {settings.bootstrap_servers} does not let this client use "
                    f"consumer group {settings.group_id!r} (GroupAuthorizationFailed): grant "
                    "it Read on that group (python -m tools.acls lists every ACL the worker "
                    "needs)") from None
            except KafkaError as error:  # e.g. the offsets topic not made yet on a new cluster
                if not error.retriable or asyncio.get_running_loop().time() > deadline:
                    return  # not an ACL: the consumer meets it, and says so, itself
                await asyncio.sleep(0.5)
    finally:
        await client.close()


async def supports_idempotence(settings: Settings) -> bool:
    """Whether the broker takes idempotent producers (Apache Kafka does, the embedded broker
    does not): with them, a send retried after a lost ack is not written twice."""
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all",
                                request_timeout_ms=_PROBE_TIMEOUT_MS, **client_kwargs(settings))
    try:
        await producer.start()
        return True
    except KafkaError as exc:
        log.warning("broker %s refused an idempotent producer (%s: %s): results are sent "
                    "without idempotence, so a retried send may write one twice",
                    settings.bootstrap_servers, type(exc).__name__, exc)
        return False
    finally:
        await producer.stop()


async def check_transactions_supported(settings: Settings) -> None:
    """exactly_once needs transactional producers; fail fast and clearly when the broker
    refuses them (the embedded broker does), instead of Faust's bare UnknownError later."""
    probe_id = f"{settings.group_id}-eos-probe"
    producer = AIOKafkaProducer(transactional_id=probe_id, request_timeout_ms=_PROBE_TIMEOUT_MS,
                                **client_kwargs(settings))
    try:
        await producer.start()
    except TransactionalIdAuthorizationFailed as exc:
        raise SettingsError(
            f"processing_guarantee=exactly_once, but broker {settings.bootstrap_servers} "
            f"does not let this client use transactional id {probe_id!r} "
            "(TransactionalIdAuthorizationFailed); grant it Write on the transactional ids "
            f"prefixed {settings.group_id + '-'!r} (`python -m tools.acls --exactly-once` "
            "lists every ACL the worker needs)") from exc
    except KafkaError as exc:
        raise SettingsError(
            f"processing_guarantee=exactly_once, but broker {settings.bootstrap_servers} "
            f"refused a transactional producer ({type(exc).__name__}: {exc}). Use a broker "
            "with transactions (Apache Kafka) or set RANKER_PROCESSING_GUARANTEE="
            "at_least_once (results carry request ids, so duplicates can be dropped)") from exc
    finally:
        await producer.stop()
