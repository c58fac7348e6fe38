"""The worker on a secured Apache Kafka: TLS on every listener, SCRAM-SHA-512 users, client
certificates, and an authorizer that denies whatever no ACL allows (tools/kafka_security.py).

Refused: clients without credentials or TLS, a wrong SCRAM password, certificates the broker
does not trust, a producer without Write on the request topic, a reader without Read on the
results topic; each refusal seen from both aiokafka and librdkafka where they differ. Then
workers granted exactly `tools.acls.worker_acls` (nothing else) rank requests end to end, as a
SCRAM user over SASL_SSL and as a certificate over SSL, creating their topics or finding them
made, at least once and exactly once.

One secured broker for the module. These tests always run on Apache Kafka (they start their
own); they run in its tier (TEST_BROKER=kafka: `make test-kafka`, the contract tier of
`make test`) and are skipped on the embedded broker's pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (KafkaConnectionError, SaslAuthenticationFailed,
                             TopicAuthorizationFailedError)
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from tests.conftest import KAFKA_TEST_CONFIG, ON_KAFKA
from tests.librdkafka_helpers import Reader
from tests.worker_harness import WorkerProcess, WorkerTopics
from tools.acls import WorkerResources, producer_acls, reader_acls, worker_acls
from tools.kafka_io import Outgoing, send_paced
from tools.kafka_security import CertificateAuthority, ClientSecurity, SecuredKafka
from tools.launcher import ROOT
from tools.producer import generate_events
from worker import codec
from worker.kafka_clients import topic_config
from worker.settings import Settings
from worker.topics import TopicSpec

pytestmark = [pytest.mark.kafka, pytest.mark.kafka_contract, pytest.mark.skipif(
    not ON_KAFKA, reason="starts a secured Apache Kafka: runs in the Apache Kafka tier "
                         "(TEST_BROKER=kafka)")]

REQUESTS = 6  # valid requests each worker ranks
_CONNECT_TIMEOUT_S = 10.0
_HANDSHAKE_REFUSED = "(SSL handshake failed)"  # how the broker logs a refused certificate


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredKafka]:
    broker = SecuredKafka(config=KAFKA_TEST_CONFIG, start_timeout_s=90.0)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- connecting ------------------------------------------------------------------------------


def aiokafka_connect(client: ClientSecurity) -> None:
    """One connection to `client.bootstrap` as aiokafka opens it (TLS, then SASL); raises
    what aiokafka raises when the broker refuses it."""
    host, port = client.bootstrap.rsplit(":", 1)
    options = {k: v for k, v in client.aiokafka().items() if k != "bootstrap_servers"}

    async def connect() -> None:
        connection = await create_conn(host, int(port), request_timeout_ms=5000, **options)
        connection.close()

    asyncio.run(connect())


def librdkafka_connect(config: dict[str, str]) -> list[KafkaError]:
    """The errors a librdkafka client reports while it connects: [] once it has metadata."""
    errors: list[KafkaError] = []
    producer = Producer({**config, "log_level": 0, "error_cb": errors.append})
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        producer.poll(0.1)  # serves error_cb
        if errors:
            return errors
        try:
            producer.list_topics(timeout=0.5)
            return []
        except KafkaException:
            continue
    raise AssertionError(f"librdkafka neither connected nor failed in {_CONNECT_TIMEOUT_S} s")


def broker_log_since(broker: SecuredKafka, mark: int) -> str:
    assert broker.log_path is not None
    return broker.log_path.read_text(errors="replace")[mark:]


def log_mark(broker: SecuredKafka) -> int:
    assert broker.log_path is not None
    return len(broker.log_path.read_text(errors="replace"))


def wait_for_text(read: Callable[[], str], text: str, timeout_s: float = 5.0) -> str:
    """`read()` once it contains `text` (the broker logs a refusal a moment after it)."""
    deadline = time.monotonic() + timeout_s
    while text not in (found := read()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_clients_without_credentials_or_tls_cannot_connect(secured: SecuredKafka) -> None:
    plaintext_sasl = dataclasses.replace(secured.admin, protocol="PLAINTEXT")
    plaintext_ssl = ClientSecurity(secured.ssl_bootstrap, "PLAINTEXT", secured.authority.cafile,
                                   "User:ANONYMOUS")
    no_certificate = ClientSecurity(secured.ssl_bootstrap, "SSL", secured.authority.cafile,
                                    "User:ANONYMOUS")
    controller = f"{secured.host}:{secured.controller_port}"  # the broker's own certificate only
    controller_clients = [dataclasses.replace(no_certificate, bootstrap=controller),
                          dataclasses.replace(plaintext_ssl, bootstrap=controller)]
    # aiokafka: the broker closes the connection (for TLS 1.3, after the client's handshake).
    for client in (plaintext_sasl, plaintext_ssl, no_certificate, *controller_clients):
        with pytest.raises(KafkaConnectionError, match="Connection at .* closed"):
            aiokafka_connect(client)
    plain_errors = librdkafka_connect({"bootstrap.servers": secured.bootstrap_servers})
    assert plain_errors[0].code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)
    mark = log_mark(secured)
    tls_errors = librdkafka_connect(no_certificate.librdkafka())
    assert tls_errors[0].code() == KafkaError._TRANSPORT
    assert "bad certificate" in tls_errors[0].str()
    assert _HANDSHAKE_REFUSED in wait_for_text(lambda: broker_log_since(secured, mark),
                                               _HANDSHAKE_REFUSED)
    # The same listeners take a client with credentials.
    aiokafka_connect(secured.admin)
    assert librdkafka_connect(secured.add_certificate_client(_name("known")).librdkafka()) == []


def test_a_wrong_scram_password_is_an_authentication_error(secured: SecuredKafka) -> None:
    user = secured.add_scram_user(_name("alice"))
    wrong = dataclasses.replace(user, password=user.password + "x")
    refused = "invalid credentials with SASL mechanism SCRAM-SHA-512"
    with pytest.raises(SaslAuthenticationFailed, match=refused):
        aiokafka_connect(wrong)
    errors = librdkafka_connect(wrong.librdkafka())
    assert errors[0].code() == KafkaError._AUTHENTICATION and refused in errors[0].str()
    with pytest.raises(SaslAuthenticationFailed, match=refused):  # a user that does not exist
        aiokafka_connect(secured.scram_client(_name("nobody"), user.password))
    aiokafka_connect(user)
    assert librdkafka_connect(user.librdkafka()) == []


def test_certificates_the_broker_does_not_trust_are_refused(secured: SecuredKafka) -> None:
    expired = secured.certificate_client(secured.authority.issue(_name("late"), expired=True))
    stranger = secured.certificate_client(
        CertificateAuthority(secured.directory / _name("other-ca"), "another CA")
        .issue(_name("mallory")))
    for client, alert in ((expired, "certificate unknown"), (stranger, "bad certificate")):
        with pytest.raises(KafkaConnectionError, match="closed"):
            aiokafka_connect(client)
        mark = log_mark(secured)
        errors = librdkafka_connect(client.librdkafka())
        assert errors[0].code() == KafkaError._TRANSPORT and alert in errors[0].str()
        assert _HANDSHAKE_REFUSED in wait_for_text(lambda: broker_log_since(secured, mark),
                                                   _HANDSHAKE_REFUSED)
    aiokafka_connect(secured.add_certificate_client(_name("trusted")))


# ---- authorization ---------------------------------------------------------------------------


async def _send(client: ClientSecurity, topic: str, values: list[bytes]) -> list[int]:
    async with AIOKafkaProducer(**client.aiokafka(), acks="all",
                                request_timeout_ms=10_000) as producer:
        return [(await producer.send_and_wait(topic, value)).offset for value in values]


def librdkafka_send(client: ClientSecurity, topic: str, value: bytes) -> KafkaError | None:
    """The delivery report's error of one message (None: delivered)."""
    reports: list[KafkaError | None] = []
    producer = Producer({**client.librdkafka(), "log_level": 0, "message.timeout.ms": 10_000})
    producer.produce(topic, value, on_delivery=lambda error, _message: reports.append(error))
    assert producer.flush(15) == 0
    return reports[0]


def test_a_producer_without_write_on_the_request_topic_is_refused(
        secured: SecuredKafka) -> None:
    topic = _name("requests")
    secured.create_topics({topic: 1})
    producer = secured.add_scram_user(_name("producer"))
    with pytest.raises(TopicAuthorizationFailedError, match=topic):
        asyncio.run(_send(producer, topic, [b"refused"]))
    error = librdkafka_send(producer, topic, b"refused")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    secured.grant(producer_acls(producer.principal, topic))
    assert asyncio.run(_send(producer, topic, [b"one"])) == [0]
    assert librdkafka_send(producer, topic, b"two") is None
    assert secured.partition_counts([topic]) == {topic: 1}


async def _read_in_group(client: ClientSecurity, topic: str, group: str,
                         count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, **client.aiokafka(), group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=6000, heartbeat_interval_ms=500)
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(record.value for record in records)
    finally:
        await consumer.stop()
    return values


def librdkafka_read_error(client: ClientSecurity, topic: str, group: str) -> KafkaError:
    """The first error a librdkafka consumer of `topic` in `group` gets."""
    consumer = Consumer({**client.librdkafka(), "group.id": group, "log_level": 0,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is not None, "read a record it may not read"
                return message.error()
        raise AssertionError(f"no error within {_CONNECT_TIMEOUT_S} s")
    finally:
        consumer.close()


def test_a_principal_without_read_on_the_results_topic_cannot_read_it(
        secured: SecuredKafka) -> None:
    topic, group = _name("results"), _name("reader-group")
    secured.create_topics({topic: 1})
    asyncio.run(_send(secured.admin, topic, [b"a result"]))
    reader = secured.add_certificate_client(_name("reader"))
    secured.grant(reader_acls(reader.principal, [], group))  # its group, not the topic
    with pytest.raises(TopicAuthorizationFailedError, match=topic):
        asyncio.run(_read_in_group(reader, topic, group, 1))
    error = librdkafka_read_error(reader, topic, group)
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    secured.grant(reader_acls(reader.principal, [topic]))
    assert asyncio.run(_read_in_group(reader, topic, group, 1)) == [b"a result"]


# ---- the worker with least privilege ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deployment:
    protocol: str  # how the worker signs in: SASL_SSL (SCRAM) or SSL (a certificate)
    guarantee: str  # RANKER_PROCESSING_GUARANTEE
    creates_topics: bool  # the worker creates its topics (Create on them), or finds them made


DEPLOYMENTS = {
    "scram-at_least_once-creates_topics": Deployment("SASL_SSL", "at_least_once", True),
    "certificate-at_least_once-topics_made_first": Deployment("SSL", "at_least_once", False),
    "scram-exactly_once-topics_made_first": Deployment("SASL_SSL", "exactly_once", False),
}


def _worker_names() -> tuple[WorkerTopics, WorkerResources]:
    """Fresh topic names for one worker, and its resources (group, topics, changelog)."""
    tag = uuid.uuid4().hex[:8]
    topics = WorkerTopics(f"req-{tag}", f"res-{tag}", f"dlq-{tag}", f"eng-{tag}")
    return topics, WorkerResources(f"ranker-{tag}", topics.requests, topics.results,
                                   topics.dead_letters, topics.engagements)


def _make_topics(secured: SecuredKafka, resources: WorkerResources) -> None:
    """What a deployment that keeps Create to itself makes before the worker starts."""
    config = topic_config(Settings(), replication_factor=1)
    secured.create_topics([TopicSpec(name, 1, config) for name in (
        resources.requests, resources.results, resources.dead_letters, resources.engagements)]
        + [TopicSpec(resources.changelog, 1, {**config, "cleanup.policy": "compact"})])


async def _send_requests(client: ClientSecurity, topic: str, seed: int) -> list[str]:
    events = list(generate_events(seed=seed, count=REQUESTS))
    async with AIOKafkaProducer(**client.aiokafka(), acks="all") as producer:
        await send_paced(producer, topic, events,
                         lambda e: Outgoing(e.encode(int(time.time() * 1000)), e.key))
    return [event.request_id for event in events]


async def _committed(client: ClientSecurity, group: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(**client.aiokafka(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


@pytest.mark.parametrize("deployment", DEPLOYMENTS.values(), ids=DEPLOYMENTS.keys())
def test_a_worker_with_least_privilege_ranks_end_to_end(secured: SecuredKafka,
                                                        deployment: Deployment) -> None:
    topics, resources = _worker_names()
    tag = resources.group_id  # names the test's principals too
    identity = (secured.add_scram_user(tag) if deployment.protocol == "SASL_SSL"
                else secured.add_certificate_client(tag))
    secured.grant(worker_acls(identity.principal, resources,
                              exactly_once=deployment.guarantee == "exactly_once",
                              creates_topics=deployment.creates_topics))
    if not deployment.creates_topics:
        _make_topics(secured, resources)
    producer = secured.add_scram_user(f"producer-{tag}")
    secured.grant(producer_acls(producer.principal, topics.requests))
    reader = secured.add_certificate_client(f"reader-{tag}")
    reader_group = f"reader-{tag}"
    secured.grant(reader_acls(reader.principal, [topics.results, topics.dead_letters],
                              reader_group))

    worker = WorkerProcess(identity.bootstrap, topics, group_id=resources.group_id,
                           env=identity.environ(),
                           extra_args=("--processing-guarantee", deployment.guarantee))
    try:
        worker.start()
        ready_s = worker.wait_ready(timeout_s=180)
        started = time.monotonic()
        sent = asyncio.run(_send_requests(producer, topics.requests, seed=7))
        with Reader(reader.bootstrap, [topics.results, topics.dead_letters], group_id=reader_group,
                    config=reader.librdkafka()) as results:
            deadline = time.monotonic() + 60
            while len(results.records()) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.1)
            records = results.records()
        answered_s = time.monotonic() - started
        assert {r.topic for r in records} == {topics.results}, worker.log()
        assert sorted(codec.decode_message(r.value)["request_id"] for r in records) == \
            sorted(sent)
        assert worker.stop() == 0, worker.log()
        # Write on its topics is enough for an idempotent producer (no IdempotentWrite).
        assert "refused an idempotent producer" not in worker.log(chars=1 << 24)
        # Least privilege: the worker may not read what it writes.
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_read_in_group(identity, topics.results, resources.group_id, 1))
        assert asyncio.run(_committed(secured.admin, resources.group_id,
                                      topics.requests)) == len(sent)
        print(f"{deployment}: ready {ready_s:.1f} s, {len(sent)} requests answered in "
              f"{answered_s:.1f} s")
    finally:
        worker.close()


def test_an_exactly_once_worker_without_its_transactional_ids_stops_saying_so(
        secured: SecuredKafka) -> None:
    topics, resources = _worker_names()
    identity = secured.add_scram_user(resources.group_id)
    secured.grant(worker_acls(identity.principal, resources))  # the at-least-once list
    worker = WorkerProcess(identity.bootstrap, topics, group_id=resources.group_id,
                           env=identity.environ(),
                           extra_args=("--processing-guarantee", "exactly_once"))
    try:
        worker.start()
        assert worker.wait(timeout_s=180) == 2, worker.log()
        last_line = worker.log().strip().splitlines()[-1]
        assert identity.password not in worker.log(1 << 24)  # nor in any line
        assert last_line.startswith("worker: error: processing_guarantee=exactly_once")
        assert "TransactionalIdAuthorizationFailed" in last_line
        assert f"Write on the transactional ids prefixed '{resources.group_id}-'" in last_line
    finally:
        worker.close()


def test_a_worker_without_create_stops_naming_the_missing_topic(secured: SecuredKafka) -> None:
    topics, resources = _worker_names()
    identity = secured.add_certificate_client(resources.group_id)
    secured.grant(worker_acls(identity.principal, resources, creates_topics=False))
    secured.create_topics({topics.requests: 1})  # the deployment forgot the others
    worker = WorkerProcess(identity.bootstrap, topics, group_id=resources.group_id,
                           env=identity.environ())
    try:
        worker.start()
        assert worker.wait(timeout_s=180) == 2, worker.log()
        last_line = worker.log().strip().splitlines()[-1]
        assert last_line.startswith(f"worker: error: Topic '{topics.results}' does not exist")
        assert "may not create it (TOPIC_AUTHORIZATION_FAILED)" in last_line
    finally:
        worker.close()
    assert secured.partition_counts([topics.results, topics.dead_letters]) == {}



# ---- the tools -------------------------------------------------------------------------------


def _tool(module: str, client: ClientSecurity, *args: str) -> subprocess.CompletedProcess:
    """`python -m <module> args` with `client`'s RANKER_* security settings, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env.update(client.environ())
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["scram", "certificate"])
def test_the_tools_connect_with_the_workers_security_settings(secured: SecuredKafka,
                                                              tmp_path: Path, kind: str) -> None:
    """The producer sends requests, `replay record` copies them into a file, `replay publish`
    sends the file to another topic and the results viewer reads them back, each holding only
    the ACLs its job needs (SCRAM over SASL_SSL, or a client certificate over SSL)."""
    requests, copies = _name("tool-req"), _name("tool-copy")
    secured.create_topics({requests: 1, copies: 1})
    client = (secured.add_scram_user(_name("tools")) if kind == "scram"
              else secured.add_certificate_client(_name("tools")))
    secured.grant(producer_acls(client.principal, requests)
                  + reader_acls(client.principal, [requests, copies])
                  + producer_acls(client.principal, copies))
    bootstrap = client.bootstrap
    produced = _tool("tools.producer", client, "--bootstrap", bootstrap, "--topic", requests,
                     "--count", str(REQUESTS), "--no-progress")
    assert produced.returncode == 0, produced.stderr
    record = tmp_path / "requests.rec"
    recorded = _tool("tools.replay", client, "record", requests, str(record), "--bootstrap",
                     bootstrap, "--count", str(REQUESTS), "--no-progress")
    assert recorded.returncode == 0, recorded.stderr
    published = _tool("tools.replay", client, "publish", str(record), "--topic", copies,
                      "--bootstrap", bootstrap, "--no-progress")
    assert published.returncode == 0, published.stderr
    viewed = _tool("tools.viewer", client, "--bootstrap", bootstrap, "--results-topic", copies,
                   "--no-dead-letters", "--json", "--count", str(REQUESTS),
                   "--idle-timeout-s", "20")
    assert viewed.returncode == 0, viewed.stderr
    ids = [json.loads(line).get("request_id") for line in viewed.stdout.splitlines()
           if line.startswith("{")]
    assert len(ids) == REQUESTS and all(ids), viewed.stdout
    assert not any(client.password and client.password in out for out in (
        produced.stdout + produced.stderr, recorded.stderr, published.stderr, viewed.stderr))


# ---- a worker that cannot get in -------------------------------------------------------------


def _wrong_password(secured: SecuredKafka, tmp: Path) -> tuple[dict[str, str], str, str]:
    user = secured.add_scram_user(_name("ranker"))
    env = user.environ()
    (tmp / "password").write_text(user.password + "-wrong\n")
    del env["RANKER_SASL_PASSWORD"]
    env["RANKER_SASL_PASSWORD_FILE"] = str(tmp / "password")
    return env, user.password + "-wrong", ("authentication failed: broker "
                                           f"{user.bootstrap} refused SASL user "
                                           f"'{user.username}' (SCRAM-SHA-512)")


def _unknown_ca(secured: SecuredKafka, tmp: Path) -> tuple[dict[str, str], str, str]:
    user = secured.add_scram_user(_name("ranker"))
    other = CertificateAuthority(tmp / "other-ca", "another CA")
    env = {**user.environ(), "RANKER_SSL_CAFILE": str(other.cafile)}
    return env, user.password, (f"TLS: broker {user.bootstrap}'s certificate is not trusted "
                                "(unable to get local issuer certificate): RANKER_SSL_CAFILE")


def _expired_certificate(secured: SecuredKafka, tmp: Path) -> tuple[dict[str, str], str, str]:
    client = secured.certificate_client(secured.authority.issue(_name("late"), expired=True))
    return client.environ(), "", (f"broker {client.bootstrap} closed the connection at once: "
                                  "it did not accept the client certificate")


def _untrusted_certificate(secured: SecuredKafka, tmp: Path) -> tuple[dict[str, str], str, str]:
    stranger = CertificateAuthority(tmp / "stranger-ca", "a stranger").issue(_name("mallory"))
    client = secured.certificate_client(stranger)
    return client.environ(), "", (f"broker {client.bootstrap} closed the connection at once: "
                                  "it did not accept the client certificate")


@pytest.mark.parametrize("case", [_wrong_password, _unknown_ca, _expired_certificate,
                                  _untrusted_certificate],
                         ids=["wrong_password", "unknown_ca", "expired_certificate",
                              "untrusted_certificate"])
def test_a_worker_that_cannot_authenticate_stops_with_one_line(
        secured: SecuredKafka, tmp_path: Path,
        case: Callable[[SecuredKafka, Path], tuple[dict[str, str], str, str]]) -> None:
    """Exit code 2 and one line naming what to fix, instead of retrying forever; the password
    appears nowhere in the worker's output."""
    env, secret, expected = case(secured, tmp_path)
    topics, resources = _worker_names()
    worker = WorkerProcess(env["RANKER_BROKER"].split("://")[-1], topics,
                           group_id=resources.group_id, env=env)
    try:
        started = time.monotonic()
        worker.start()
        assert worker.wait(timeout_s=120) == 2, worker.log()
        took_s = time.monotonic() - started
        output = worker.log(200_000)
    finally:
        worker.close()
    last_line = output.strip().splitlines()[-1]
    print(f"\n{last_line}\n  (exit 2 {took_s:.1f} s after the start, model compile included)")
    assert last_line.startswith("worker: error: " + expected), last_line
    assert "Traceback" not in output
    if secret:
        assert secret not in output


@pytest.mark.parametrize("resource, operation, expected", [
    ("requests", "READ", "Topic '{requests}' exists on {bootstrap}, but this client may not see "
                         "it (no Describe"),
    ("results", "WRITE", "Topic '{results}' exists on {bootstrap}, but this client may not see "
                         "it (no Describe"),
    ("group_id", "READ", "broker {bootstrap} does not let this client use consumer group "
                         "'{group_id}' (GroupAuthorizationFailed): grant it Read on that group"),
], ids=["no_read_on_requests", "no_write_on_results", "no_read_on_group"])
def test_a_worker_missing_an_acl_stops_naming_it(secured: SecuredKafka, resource: str,
                                                 operation: str, expected: str) -> None:
    """Granted the least-privilege list less one rule, the worker stops at start with exit 2
    and one line naming the resource (without the group rule it used to wait forever)."""
    topics, resources = _worker_names()
    identity = secured.add_scram_user(resources.group_id)
    name = getattr(resources, resource)
    acls = worker_acls(identity.principal, resources)
    kept = [a for a in acls if not (a.resource_name == name and a.operation == operation)]
    assert len(kept) == len(acls) - 1
    secured.grant(kept)
    worker = WorkerProcess(identity.bootstrap, topics, group_id=resources.group_id,
                           env=identity.environ())
    try:
        started = time.monotonic()
        worker.start()
        assert worker.wait(timeout_s=120) == 2, worker.log()
        took_s = time.monotonic() - started
        last_line = worker.log().strip().splitlines()[-1]
        assert identity.password not in worker.log(1 << 24)  # nor in any line
    finally:
        worker.close()
    print(f"\n{last_line}\n  (exit 2 {took_s:.1f} s after the start)")
    assert last_line.startswith("worker: error: " + expected.format(
        bootstrap=identity.bootstrap, **dataclasses.asdict(resources))), last_line


@dataclasses.dataclass
class _Revocation:
    """A worker deployment whose Write on the results topic a test takes away."""

    topics: WorkerTopics
    resources: WorkerResources
    identity: ClientSecurity
    producer: ClientSecurity
    write_results: list

    @classmethod
    def granted(cls, secured: SecuredKafka, exactly_once: bool) -> "_Revocation":
        topics, resources = _worker_names()
        identity = secured.add_scram_user(resources.group_id)
        acls = secured.grant(worker_acls(identity.principal, resources,
                                         exactly_once=exactly_once))
        producer = secured.add_scram_user(f"producer-{resources.group_id}")
        secured.grant(producer_acls(producer.principal, topics.requests))
        return cls(topics, resources, identity, producer,
                   [a for a in acls if a.resource_name == topics.results and
                    a.operation == "WRITE"])

    def worker(self, guarantee: str) -> WorkerProcess:
        return WorkerProcess(self.identity.bootstrap, self.topics,
                             group_id=self.resources.group_id, env=self.identity.environ(),
                             extra_args=("--processing-guarantee", guarantee))

    def serve_then_revoke(self, secured: SecuredKafka, worker: WorkerProcess, seed: int
                          ) -> tuple[list[str], list[str]]:
        """Starts `worker`, has it answer and commit a few requests, takes the ACL away and
        sends a few more; returns both lists of request ids."""
        worker.start()
        worker.wait_ready(timeout_s=180)
        before = self.send(seed=seed)
        _wait_until(lambda: self.committed(secured) == len(before), 60,
                    "the first requests committed")
        secured.revoke(self.write_results)
        return before, self.send(seed=seed + 1)

    def send(self, seed: int) -> list[str]:
        return asyncio.run(_send_requests(self.producer, self.topics.requests, seed=seed))

    def committed(self, secured: SecuredKafka) -> int | None:
        return asyncio.run(_committed(secured.admin, self.resources.group_id,
                                      self.topics.requests))

    def answers(self, secured: SecuredKafka, count: int) -> list[dict]:
        """The first `count` answers a read_committed reader sees (and any right behind)."""
        with Reader(secured.admin.bootstrap, [self.topics.results, self.topics.dead_letters],
                    config=secured.admin.librdkafka()) as reader:
            _wait_until(lambda: len(reader.records()) >= count, 90, f"{count} answers")
            time.sleep(1.0)  # a duplicate would arrive right behind
            return [codec.decode_message(r.value) for r in reader.records()]


@pytest.mark.timeout(240)
def test_write_on_results_revoked_while_serving_holds_requests_until_granted_again(
        secured: SecuredKafka) -> None:
    """At least once: while the ACL is gone the worker answers nothing, commits nothing past
    the first unanswered request, and says so (log, /ready, metric); granted again, the same
    worker answers every request once, none as a dead letter."""
    case = _Revocation.granted(secured, exactly_once=False)
    worker = case.worker("at_least_once")
    try:
        before, during = case.serve_then_revoke(secured, worker, seed=11)
        _wait_until(lambda: worker.metric("ranker_sends_refused_total") > 0, 60,
                    "a refused send")
        status, body = worker.get("/ready")
        time.sleep(3.0)  # a few retries: the offsets must stay put meanwhile
        held_at = case.committed(secured)
        log = worker.log(1 << 24)
        assert case.identity.password not in log + worker.metrics() + body
        secured.grant(case.write_results)
        answers = case.answers(secured, len(before) + len(during))
        _wait_until(worker.ready, 30, "ready again")
    finally:
        worker.close()
    assert status == 503 and "refused: the broker refuses this worker's sends to topic " \
        f"'{case.topics.results}' (TopicAuthorizationFailedError): grant it Write" in body, body
    assert held_at == len(before), held_at
    assert "stays unanswered and its offset uncommitted" in log
    assert not [a["error"] for a in answers if "error" in a]
    assert sorted(a["request_id"] for a in answers) == sorted(before + during)


@pytest.mark.timeout(300)
def test_write_on_results_revoked_under_exactly_once_stops_the_worker_uncommitted(
        secured: SecuredKafka) -> None:
    """Exactly once: the refused send aborts its transaction, so the worker stops (exit 2,
    one line naming the ACL) with the batch uncommitted; a worker started after the grant
    answers every request exactly once, as a read_committed reader sees them."""
    case = _Revocation.granted(secured, exactly_once=True)
    worker = case.worker("exactly_once")
    try:
        before, during = case.serve_then_revoke(secured, worker, seed=13)
        assert worker.wait(timeout_s=60) == 2, worker.log()
        last_line = worker.log().strip().splitlines()[-1]
        assert case.identity.password not in worker.log(1 << 24)  # nor in any line
    finally:
        worker.close()
    held_at = case.committed(secured)
    secured.grant(case.write_results)
    restarted = case.worker("exactly_once")
    try:
        restarted.start()
        answers = case.answers(secured, len(before) + len(during))
    finally:
        restarted.close()
    assert last_line.startswith("worker: error: the broker refuses this worker's sends to "
                                f"topic '{case.topics.results}'"), last_line
    assert "under exactly_once this aborts the transaction" in last_line
    assert held_at == len(before), held_at
    assert not [a["error"] for a in answers if "error" in a]
    assert sorted(a["request_id"] for a in answers) == sorted(before + during)


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
