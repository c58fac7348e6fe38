"""Broker security settings reach every Kafka client: TLS and SASL from
`RANKER_*` configuration to aiokafka's keyword arguments and to Faust's credentials, and the TLS
context they build really does mutual TLS. No TLS broker is needed: nothing connects to Kafka.

Input caps (msgpack unpacker limits before allocation) are tested in test_codec.py and
test_fuzz_decode.py, not here.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import aiokafka
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from worker.kafka_clients import client_kwargs, faust_credentials
from worker.upstream.fetch_wait import ConsumerTuning
from worker.upstream.tuned_app import TunedApp
from worker.settings import Settings, SettingsError

# A throwaway self-signed certificate (CN=localhost, SAN localhost/127.0.0.1, valid 2000-2100)
# with its key: test data only, it protects nothing. It serves as CA, server and client cert.
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgozKCYMsP4sEB0TOp
FBicwrgW/ZWYRvtq5CZNl8pSDW2hRANCAATK9TeYT+QDI3bGKZhhmTxXZm4cuDV2
112nAAE1uRxIfn2eubMI6IeipmBEJFHmCTY/GLIPiQo31dkEOIgP0OyB
-----END PRIVATE KEY-----
"""
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBdjCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMr1N5hP5AMjdsYp
mGGZPFdmbhy4NXbXXacAATW5HEh+fZ65swjoh6KmYEQkUeYJNj8Ysg+JCjfV2QQ4
iA/Q7IGjXjBcMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAPBgNVHRMBAf8E
BTADAQH/MA4GA1UdDwEB/wQEAwIChDAdBgNVHQ4EFgQUZyuZgkrfCzVRnOjjNI29
WGYWgIswCgYIKoZIzj0EAwIDRwAwRAIgRprZ2DSy8MkqpwVa26p0Z7sJt4ZuR4CY
GWjelaCsoLMCIBrlpw5VKDeXe3snX0ZUPFLC7j5tjmN4x8lQ1O/lyDlN
-----END CERTIFICATE-----
"""
PASSWORD = "s3cret-pa55"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "cert.pem").write_text(TEST_CERT)
    (tmp_path / "key.pem").write_text(TEST_KEY)
    return {"RANKER_SSL_CAFILE": str(tmp_path / "cert.pem"),
            "RANKER_SSL_CERTFILE": str(tmp_path / "cert.pem"),
            "RANKER_SSL_KEYFILE": str(tmp_path / "key.pem")}


def settings_from_env(protocol: str, mechanism: str = "PLAIN", **extra: str) -> Settings:
    return Settings.load([], environ={
        "RANKER_BROKER": "kafka://broker-1:9093;kafka://broker-2:9093",
        "RANKER_SECURITY_PROTOCOL": protocol, "RANKER_SASL_MECHANISM": mechanism,
        "RANKER_SASL_USERNAME": "ranker", "RANKER_SASL_PASSWORD": PASSWORD, **extra})


# ---- aiokafka clients (producer tool, admin, results viewer, replay) -------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_settings_become_aiokafka_kwargs(mechanism, tls_files):
    settings = settings_from_env("SASL_SSL", mechanism, **tls_files)
    kwargs = client_kwargs(settings)
    assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("ranker", PASSWORD)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "localhost"),),)]


def test_aiokafka_accepts_the_kwargs_and_keeps_them(tls_files):
    settings = settings_from_env("SASL_SSL", "SCRAM-SHA-512", **tls_files)

    async def build() -> aiokafka.AIOKafkaProducer:
        return aiokafka.AIOKafkaProducer(**client_kwargs(settings))  # validates, connects not

    client = asyncio.run(build()).client
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-512"
    assert client._sasl_plain_username == "ranker"
    assert client._sasl_plain_password == PASSWORD
    assert client._ssl_context is not None


def test_plaintext_and_sasl_plaintext_build_no_tls_context():
    assert client_kwargs(settings_from_env("PLAINTEXT")) == {
        "bootstrap_servers": "broker-1:9093,broker-2:9093", "security_protocol": "PLAINTEXT"}
    kwargs = client_kwargs(settings_from_env("SASL_PLAINTEXT", "SCRAM-SHA-256"))
    assert "ssl_context" not in kwargs
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"


# ---- Faust (the worker's own consumer and producer) -------------------------------------------


@pytest.mark.parametrize("protocol, mechanism", [
    ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256")])
def test_faust_credentials_carry_mechanism_user_and_tls(protocol, mechanism, tls_files):
    settings = settings_from_env(protocol, mechanism, **tls_files)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == mechanism
    assert (credentials.username, credentials.password) == ("ranker", PASSWORD)
    assert credentials.protocol.value == protocol
    assert (credentials.ssl_context is not None) == protocol.endswith("SSL")
    # What Faust's aiokafka driver will hand to aiokafka for these credentials:
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == protocol
    assert auth["sasl_mechanism"] == mechanism


def test_faust_tls_only_and_plaintext(tls_files):
    credentials = faust_credentials(settings_from_env("SSL", **tls_files))
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"
    assert faust_credentials(settings_from_env("PLAINTEXT")) is None


def test_the_worker_app_builds_its_consumer_and_producer_with_the_credentials(tls_files):
    settings = settings_from_env("SASL_SSL", "SCRAM-SHA-512", **tls_files)
    app = TunedApp("security-unit", broker=settings.faust_broker,
                   broker_credentials=faust_credentials(settings),
                   consumer_tuning=ConsumerTuning(), env={}, web_enabled=False)

    async def build():
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        producer = app.producer._new_producer()
        return consumer, producer

    consumer, producer = asyncio.run(build())
    for client in (consumer._client, producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("ranker", PASSWORD)
        assert client._ssl_context is not None
    assert sorted(host[:2] for host in consumer._client.hosts) == [("broker-1", 9093),
                                                                   ("broker-2", 9093)]


# ---- the TLS context really authenticates both ends ---------------------------------------------


def _handshake(client_context: ssl.SSLContext, cert: str, key: str) -> str:
    """Runs one TLS handshake against a local server that requires a client certificate signed
    by `cert`; returns the client certificate's CN as the server saw it."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.load_verify_locations(cert)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
            except (ssl.SSLError, OSError) as exc:
                seen["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_context.wrap_socket(raw, server_hostname="localhost"):
                pass
        thread.join(5)
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
    subject = dict(item[0] for item in seen["peer"]["subject"])  # type: ignore[index]
    return subject["commonName"]


def test_tls_context_from_settings_does_mutual_tls(tls_files):
    settings = settings_from_env("SSL", **tls_files)
    context = client_kwargs(settings)["ssl_context"]
    assert _handshake(context, tls_files["RANKER_SSL_CERTFILE"],
                      tls_files["RANKER_SSL_KEYFILE"]) == "localhost"


def test_tls_context_without_the_client_cert_is_refused_by_a_mutual_tls_server(tls_files):
    # The control for the test above: the same CA, no client certificate.
    settings = settings_from_env("SSL", RANKER_SSL_CAFILE=tls_files["RANKER_SSL_CAFILE"])
    context = client_kwargs(settings)["ssl_context"]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(context, tls_files["RANKER_SSL_CERTFILE"], tls_files["RANKER_SSL_KEYFILE"])


# ---- configuration errors and secrets ---------------------------------------------------------


def test_password_is_masked_when_settings_are_printed(tls_files):
    described = settings_from_env("SASL_SSL", "SCRAM-SHA-512", **tls_files).describe()
    assert PASSWORD not in described
    assert "sasl_password" in described and "'SCRAM-SHA-512'" in described


@pytest.mark.parametrize("env, message", [
    ({"RANKER_SECURITY_PROTOCOL": "TLS"}, "security_protocol must be"),
    ({"RANKER_SASL_MECHANISM": "SCRAM-SHA-1"}, "sasl_mechanism must be"),
    ({"RANKER_SASL_MECHANISM": "GSSAPI"}, "sasl_mechanism must be"),
])
def test_unsupported_security_settings_are_refused_with_the_choices(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load([], environ=env)


def test_tools_connect_with_the_same_security_settings(tls_files):
    from tools.kafka_io import connection

    settings = settings_from_env("SASL_SSL", "SCRAM-SHA-512", **tls_files)
    conn = connection("broker-a:9093", settings)
    assert conn["bootstrap_servers"] == "broker-a:9093"
    assert conn["security_protocol"] == "SASL_SSL"
    assert conn["sasl_mechanism"] == "SCRAM-SHA-512"
    assert conn["ssl_context"] is not None


def test_tls_files_that_do_not_load_are_a_settings_error_naming_them(tls_files, tmp_path):
    missing = {**tls_files, "RANKER_SSL_CAFILE": str(tmp_path / "absent.pem")}
    with pytest.raises(SettingsError, match="^RANKER_SSL_CAFILE: cannot read '.*absent.pem'$"):
        client_kwargs(settings_from_env("SSL", **missing))
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    garbage = {**tls_files, "RANKER_SSL_CERTFILE": str(tmp_path / "garbage.pem")}
    with pytest.raises(SettingsError, match="the TLS files do not load .*RANKER_SSL_CERTFILE"):
        client_kwargs(settings_from_env("SASL_SSL", **garbage))
