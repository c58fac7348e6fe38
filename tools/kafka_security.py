"""A secured Apache Kafka for tests and tools: TLS everywhere, SCRAM users, client
certificates, and an authorizer that denies whatever no ACL allows.

    with SecuredKafka() as broker:
        worker = broker.add_scram_user("ranker")                 # -> ClientSecurity
        broker.grant(worker_acls(worker.principal, WorkerResources("phoenix-ranker")))
        env = worker.environ()                                   # RANKER_* for the worker

The node (`tools.apache_kafka.ApacheKafka`, one KRaft node) has no plaintext port. Listeners:

- `SASL_SSL` (`bootstrap_servers`): SCRAM-SHA-512 over TLS. The broker talks to itself here as
  the SCRAM user `broker`; `broker` and `admin` are made when the storage is formatted, the
  others through the admin API (`add_scram_user`).
- `SSL` (`ssl_bootstrap`): TLS with a client certificate required; the principal is the
  certificate's common name (`User:<CN>`, by `ssl.principal.mapping.rules`).
- `CONTROLLER`: TLS with a client certificate required, where the broker signs in with its own
  certificate (`User:broker`); any other certificate is an ordinary principal there.

Super users: `User:broker` and `User:admin` only. Certificates are made at start by `trustme`
(a test CA; keys in PKCS#8 PEM, which Kafka's PEM key stores read): the broker's for 127.0.0.1
and localhost, and any client certificate asked for, including an expired one and one from
another CA, to show that the broker refuses them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trustme
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from confluent_kafka import KafkaException
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, ResourcePatternType,
                                   ResourceType, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          load_pem_private_key)

from tools.acls import Acl
from tools.apache_kafka import ApacheKafka
from tools.broker import BrokerError, free_port
from worker.kafka_clients import client_kwargs, connection_options
from worker.settings import Settings

__all__ = ["CertificateAuthority", "ClientCertificate", "ClientSecurity", "SecuredKafka"]

SCRAM_MECHANISM = "SCRAM-SHA-512"
_SCRAM_ITERATIONS = 8192  # Kafka takes 4096 or more for SHA-512
BROKER_USER, ADMIN_USER = "broker", "admin"  # the two super users
_BROKER_HOSTS = ("127.0.0.1", "localhost")  # the names the broker's certificate is valid for
# The principal of a certificate is its common name: "CN=ranker,OU=...,O=..." -> User:ranker.
_PRINCIPAL_MAPPING = r"RULE:^CN=([^,]+),.*$/$1/,DEFAULT"
_PROPAGATION_TIMEOUT_S = 15.0  # a new user or ACL reaches the broker's cache well within this
_POLL_S = 0.1
_ADMIN_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class ClientCertificate:
    """A certificate and its key, in PEM files."""

    common_name: str  # the subject's CN: the principal name on the broker's SSL listener
    certfile: Path  # the certificate, then its chain up to (not including) the root
    keyfile: Path  # the private key, unencrypted PKCS#8


class CertificateAuthority:
    """A test CA (trustme) that writes what it issues as PEM files into `directory`."""

    def __init__(self, directory: Path, name: str = "ranker test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._ca = trustme.CA(organization_name=name)
        self.cafile = self.directory / f"{_file_name(name)}.pem"  # the CA certificate
        self._ca.cert_pem.write_to_path(str(self.cafile))

    def issue(self, common_name: str, *hosts: str, expired: bool = False) -> ClientCertificate:
        """A certificate for `common_name`, valid for `hosts` (default: a name of its own);
        `expired`: its validity ended yesterday."""
        dates: dict[str, datetime.datetime] = {}
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            dates = {"not_before": now - datetime.timedelta(days=30),
                     "not_after": now - datetime.timedelta(days=1)}
        # An empty subjectAltName is invalid X.509, refused by Java: name a host that is none.
        leaf = self._ca.issue_cert(*(hosts or (f"{common_name}.clients.invalid",)),
                                   common_name=common_name, organization_unit_name="ranker",
                                   **dates)
        stem = self.directory / _file_name(f"{common_name}{'-expired' if expired else ''}")
        certfile, keyfile = stem.with_suffix(".crt.pem"), stem.with_suffix(".key.pem")
        certfile.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key = load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        keyfile.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        keyfile.chmod(0o600)
        return ClientCertificate(common_name, certfile, keyfile)


@dataclasses.dataclass(frozen=True)
class ClientSecurity:
    """How one client reaches the secured broker: a SCRAM user over SASL_SSL, or a
    certificate over SSL. The same settings in the worker's, aiokafka's and librdkafka's
    terms."""

    bootstrap: str  # host:port of the listener for `protocol`
    protocol: str  # SASL_SSL or SSL
    cafile: Path  # the CA that signed the broker's certificate
    principal: str  # User:<name>, as the broker's authorizer sees this client
    username: str = ""  # SASL_SSL: the SCRAM user and password
    password: str = ""
    certificate: ClientCertificate | None = None  # SSL: the client certificate

    def environ(self) -> dict[str, str]:
        """The worker's RANKER_* variables for this client (broker and security)."""
        env = {"RANKER_BROKER": f"kafka://{self.bootstrap}",
               "RANKER_SECURITY_PROTOCOL": self.protocol, "RANKER_SSL_CAFILE": str(self.cafile)}
        if self.protocol.startswith("SASL"):
            env.update(RANKER_SASL_MECHANISM=SCRAM_MECHANISM, RANKER_SASL_USERNAME=self.username,
                       RANKER_SASL_PASSWORD=self.password)
        if self.certificate is not None:
            env.update(RANKER_SSL_CERTFILE=str(self.certificate.certfile),
                       RANKER_SSL_KEYFILE=str(self.certificate.keyfile))
        return env

    def settings(self) -> Settings:
        """The worker's settings object with these security settings."""
        return Settings.load((), environ=self.environ())

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka connection arguments, built as the worker builds its own."""
        return client_kwargs(self.settings())

    def librdkafka(self) -> dict[str, str]:
        """confluent-kafka (librdkafka) configuration."""
        config = {"bootstrap.servers": self.bootstrap, "security.protocol": self.protocol,
                  "ssl.ca.location": str(self.cafile)}
        if self.protocol.startswith("SASL"):
            config.update({"sasl.mechanism": SCRAM_MECHANISM, "sasl.username": self.username,
                           "sasl.password": self.password})
        if self.certificate is not None:
            config.update({"ssl.certificate.location": str(self.certificate.certfile),
                           "ssl.key.location": str(self.certificate.keyfile)})
        return config


class SecuredKafka(ApacheKafka):
    """`ApacheKafka` with TLS, SCRAM, client certificates and ACLs (see the module doc).

    `directory`: where certificates go (default: a temporary one, removed by `stop()`).
    `config` and the other keyword arguments are `ApacheKafka`'s; further listeners are not
    supported.
    """

    def __init__(self, port: int | None = None, *, ssl_port: int | None = None,
                 directory: Path | str | None = None, **kwargs: Any) -> None:
        if kwargs.get("listeners"):
            raise ValueError("SecuredKafka serves its SASL_SSL and SSL listeners only")
        super().__init__(port, **kwargs)
        self.ssl_port = ssl_port or free_port(self.host)
        self._own_directory = (tempfile.TemporaryDirectory(prefix="kafka-security-")
                               if directory is None else None)
        self.directory = Path(self._own_directory.name if self._own_directory else directory)
        self.authority = CertificateAuthority(self.directory / "ca")
        self.broker_certificate = self.authority.issue(BROKER_USER, *_BROKER_HOSTS)
        self.keystore = self.directory / "broker.keystore.pem"  # key, then certificate chain
        self.keystore.write_bytes(self.broker_certificate.keyfile.read_bytes()
                                  + self.broker_certificate.certfile.read_bytes())
        self.keystore.chmod(0o600)
        self._passwords = {BROKER_USER: secrets.token_urlsafe(18),
                           ADMIN_USER: secrets.token_urlsafe(18)}
        self._admin: AdminClient | None = None

    @classmethod
    def title(cls) -> str:
        return f"{super().title()} (TLS, SASL/SCRAM, ACLs)"

    @property
    def ssl_bootstrap(self) -> str:
        """host:port of the SSL listener (client certificates)."""
        return f"{self.host}:{self.ssl_port}"

    @property
    def super_users(self) -> tuple[str, ...]:
        return (f"User:{BROKER_USER}", f"User:{ADMIN_USER}")

    # ---- configuration --------------------------------------------------------------------

    def broker_config(self, data_dir: Path) -> dict[str, str]:
        """`ApacheKafka`'s properties with the secured listeners, TLS, SCRAM and the
        authorizer (the `config` given at construction still has the last word)."""
        controller = f"{self.host}:{self.controller_port}"
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{BROKER_USER}" password="{self._passwords[BROKER_USER]}";')
        secured = {
            "listeners": f"SASL_SSL://{self.bootstrap_servers},SSL://{self.ssl_bootstrap},"
                         f"CONTROLLER://{controller}",
            "advertised.listeners": f"SASL_SSL://{self.advertise or self.bootstrap_servers},"
                                    f"SSL://{self.ssl_bootstrap}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            # TLS: one key store (the broker's certificate) and one trust store (the CA).
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.authority.cafile),
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.principal.mapping.rules": _PRINCIPAL_MAPPING,
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            # SCRAM on the SASL_SSL listener, the broker signing in to itself as `broker`.
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
            # Deny what no ACL allows; only the broker and the admin bypass the ACLs.
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(self.super_users),
        }
        return {**super().broker_config(data_dir), **secured, **self.config}

    def format_options(self) -> list[str]:
        """The broker's and the admin's SCRAM credentials, written with the storage."""
        return [option for name, password in self._passwords.items()
                for option in ("--add-scram",
                               f"{SCRAM_MECHANISM}=[name={name},password={password}]")]

    def client_options(self) -> dict[str, Any]:
        """The admin's aiokafka options: readiness probe and topic creation run as admin."""
        return connection_options(self.admin.settings())

    def stop(self) -> None:
        """Stop the broker; remove the certificates too if they are in a directory of ours."""
        self._admin = None  # before the broker goes: it would log its reconnects
        super().stop()
        if self._own_directory is not None:
            self._own_directory.cleanup()
            self._own_directory = None

    # ---- clients --------------------------------------------------------------------------

    @property
    def admin(self) -> ClientSecurity:
        """The super user `admin` over SASL_SSL."""
        return self.scram_client(ADMIN_USER, self._passwords[ADMIN_USER])

    def scram_client(self, username: str, password: str) -> ClientSecurity:
        """A client that signs in as `username` with `password` (right or wrong)."""
        return ClientSecurity(self.bootstrap_servers, "SASL_SSL", self.authority.cafile,
                              f"User:{username}", username=username, password=password)

    def certificate_client(self, certificate: ClientCertificate) -> ClientSecurity:
        """A client that presents `certificate` on the SSL listener."""
        return ClientSecurity(self.ssl_bootstrap, "SSL", self.authority.cafile,
                              f"User:{certificate.common_name}", certificate=certificate)

    def add_certificate_client(self, common_name: str) -> ClientSecurity:
        """A new certificate from the broker's CA for `common_name`, and its client. The CN
        is the principal: the super users' names are refused (ValueError)."""
        if f"User:{common_name}" in self.super_users:
            raise ValueError(f"CN={common_name} would be the super user User:{common_name}; "
                             "pick another name")
        return self.certificate_client(self.authority.issue(common_name))

    def add_scram_user(self, username: str, password: str | None = None) -> ClientSecurity:
        """Creates (or updates) SCRAM user `username` through the admin API and returns its
        client once the broker lets it sign in."""
        password = password or secrets.token_urlsafe(18)
        upsert = UserScramCredentialUpsertion(
            username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _SCRAM_ITERATIONS),
            password.encode())
        admin = self._admin_client()
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=_ADMIN_TIMEOUT_S)
        client = self.scram_client(username, password)
        _wait_for(lambda: _signs_in(client), f"SCRAM user {username!r} to sign in")
        return client

    def grant(self, acls: Iterable[Acl]) -> list[Acl]:
        """Creates ALLOW bindings for `acls` as the admin; returns once the broker's
        authorizer lists every one of them."""
        acls = list(acls)
        admin = self._admin_client()
        bindings = [_binding(acl) for acl in acls]
        for future in admin.create_acls(bindings).values():
            future.result(timeout=_ADMIN_TIMEOUT_S)
        _wait_for(lambda: all(_listed(admin, b) for b in bindings),
                  f"{len(bindings)} ACLs to reach the broker's authorizer")
        return acls

    def revoke(self, acls: Iterable[Acl]) -> None:
        """Deletes the ALLOW bindings of `acls` as the admin; returns once the broker's
        authorizer no longer lists them."""
        admin = self._admin_client()
        bindings = [_binding(acl) for acl in acls]
        for future in admin.delete_acls([_filter(b) for b in bindings]).values():
            future.result(timeout=_ADMIN_TIMEOUT_S)
        _wait_for(lambda: not any(_listed(admin, b) for b in bindings),
                  f"{len(bindings)} ACLs to leave the broker's authorizer")

    def _admin_client(self) -> AdminClient:
        """The admin's librdkafka admin client (kept: its futures fail once it is freed)."""
        if self._admin is None:
            self._admin = AdminClient({**self.admin.librdkafka(), "log_level": 3})
        return self._admin


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _binding(acl: Acl) -> AclBinding:
    return AclBinding(ResourceType[acl.resource_type], acl.resource_name,
                      ResourcePatternType[acl.pattern_type], acl.principal, acl.host,
                      AclOperation[acl.operation], AclPermissionType.ALLOW)


def _filter(binding: AclBinding) -> AclBindingFilter:
    """The filter that matches exactly `binding`."""
    return AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type,
                            binding.principal, binding.host, binding.operation,
                            binding.permission_type)


def _listed(admin: AdminClient, binding: AclBinding) -> bool:
    try:
        return bool(admin.describe_acls(_filter(binding)).result(timeout=_ADMIN_TIMEOUT_S))
    except KafkaException:
        return False


def _signs_in(client: ClientSecurity) -> bool:
    async def bootstrap() -> bool:
        probe = AIOKafkaClient(request_timeout_ms=5000, **client.aiokafka())
        try:
            await probe.bootstrap()
            return True
        except KafkaError:
            return False
        finally:
            await probe.close()

    return asyncio.run(bootstrap())


def _wait_for(done: Callable[[], bool], what: str,
              timeout_s: float = _PROPAGATION_TIMEOUT_S) -> None:
    """Poll `done` until it holds; `BrokerError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            raise BrokerError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(_POLL_S)

