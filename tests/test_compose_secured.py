"""docker-compose.secured.yml, the stack on a secured Kafka, checked without a Docker engine.

As data: no plaintext listener, an authorizer that denies what no ACL allows, each ranker
container signed in as its own SCRAM user with its password in a file, the ACL script equal to
`tools.acls`' output for the stack's names, and the start order.

For real (`kafka`-marked): the secured stack's steps run on this host in order, as the
containers would run them, with the container paths and ports moved here: `secrets` makes the
CA, certificates and passwords with the JRE's keytool; the image's entrypoint starts Kafka with
the compose `kafka` environment; its health check and the `topics` step run as the admin; the
`access` step creates the users and ACLs; then the worker, the producer and the results viewer
run with their compose environments, and every request sent is answered. A producer signed in
as the viewer is refused, and no password appears in any step's output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import compose_stack
from tests.test_compose import env_of
from tests.test_kafka_image import (entrypoint_broker, host_environ,  # noqa: F401
                                    kafka_home, moved_to_host, tail)
from tests.worker_harness import TEST_BUCKETS, TEST_MAX_CANDIDATES
from tools.acls import WorkerResources, producer_acls, reader_acls, worker_acls
from tools.apache_kafka import java_binary
from tools.broker import free_port
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "docker" / "secured"
RANKER_CLIENTS = ("worker", "worker-gpu", "producer", "results")
SECURE_PROTOCOLS = {"SSL", "SASL_SSL"}
SCRAM = "SCRAM-SHA-512"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 240.0
REQUESTS = 40


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return compose_stack.services(secured=True)


def listeners(spec: str) -> dict[str, str]:
    return dict(part.split("://", 1) for part in spec.split(","))


def script_users(name: str) -> list[str]:
    """The `users="..."` list of a script in docker/secured/."""
    match = re.search(r'^users="([^"]+)"', (SETUP / name).read_text(), re.M)
    assert match, f"{name} names no users"
    return match[1].split()


def client_env(services: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    return env_of(services[name])


def settings_of(services: dict[str, dict[str, Any]], name: str, tmp_path: Path) -> Settings:
    """The settings container `name` loads, its password file standing in a temporary one."""
    stand_in = tmp_path / "password"
    stand_in.write_text("not-the-password\n")
    return Settings.load((), environ={**client_env(services, name),
                                      "RANKER_SASL_PASSWORD_FILE": str(stand_in)})


# ----------------------------------------------------------------------------- as data


def test_secured_kafka_serves_no_plaintext_listener(services):
    env = env_of(services["kafka"])
    protocols = {name: protocol for name, protocol in
                 (item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                  .split(","))}
    bound = listeners(env["KAFKA_LISTENERS"])
    assert set(bound) == set(protocols), "every listener needs its protocol"
    assert {protocols[name] for name in bound} <= SECURE_PROTOCOLS, protocols
    for name in listeners(env["KAFKA_ADVERTISED_LISTENERS"]):
        assert protocols[name] in SECURE_PROTOCOLS, name
    assert protocols[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == "SSL"
    assert protocols[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "SSL"
    assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"  # certificates on the SSL listeners
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == SCRAM
    # The official image refuses SASL without KAFKA_OPTS naming a JAAS file.
    assert "java.security.auth.login.config=/etc/kafka/secrets/" in env["KAFKA_OPTS"]


def test_secured_kafka_denies_what_no_acl_allows(services):
    env = env_of(services["kafka"])
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith(".StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    super_users = set(env["KAFKA_SUPER_USERS"].split(";"))
    assert super_users == {"User:CN=broker", "User:CN=admin"}
    made = (SETUP / "make-secrets.sh").read_text()
    for user in super_users:  # the certificates make-secrets.sh signs carry these names
        assert f'signed_key "$broker_dir/{user.split("=")[1]}.keystore.p12"' in made


def test_the_broker_reads_its_stores_by_the_official_images_names(services):
    env = env_of(services["kafka"])
    made = (SETUP / "make-secrets.sh").read_text()
    for variable in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEYSTORE_CREDENTIALS",
                     "KAFKA_SSL_KEY_CREDENTIALS", "KAFKA_SSL_TRUSTSTORE_FILENAME",
                     "KAFKA_SSL_TRUSTSTORE_CREDENTIALS"):
        assert f'$broker_dir/{env[variable]}"' in made, f"make-secrets.sh makes no {env[variable]}"
    assert not any("PASSWORD" in name for name in env), "passwords come from files only"
    assert "/etc/kafka/secrets" in [volume.split(":")[1] for volume in services["kafka"]["volumes"]]


def test_every_ranker_client_signs_in_as_its_own_user_from_a_password_file(services, tmp_path):
    users = {}
    for name in RANKER_CLIENTS:
        env = client_env(services, name)
        assert "RANKER_SASL_PASSWORD" not in env, f"{name}: a password in the environment"
        settings = settings_of(services, name, tmp_path)
        assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", SCRAM)
        assert settings.sasl_password == "not-the-password"
        password_file = env["RANKER_SASL_PASSWORD_FILE"]
        mounts = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert str(Path(password_file).parent) in mounts, name
        assert Path(env["RANKER_SSL_CAFILE"]).parent == Path(password_file).parent
        assert Path(password_file).name == f"{env['RANKER_SASL_USERNAME']}.password"
        users[name] = env["RANKER_SASL_USERNAME"]
    assert users["worker"] == users["worker-gpu"]  # one consumer group, one principal
    assert len({users["worker"], users["producer"], users["results"]}) == 3
    assert set(users.values()) == set(script_users("make-secrets.sh"))
    assert set(users.values()) == set(script_users("grant-access.sh"))


def test_the_acl_script_is_what_tools_acls_prints_for_this_stack(services, tmp_path):
    """docker/secured/acls.sh grants the worker, the producer and the viewer exactly what
    `tools.acls` says each needs for the stack's group and topics: a rename in either fails."""
    settings = settings_of(services, "worker", tmp_path)
    principal = {name: f"User:{client_env(services, name)['RANKER_SASL_USERNAME']}"
                 for name in ("worker", "producer", "results")}
    resources = WorkerResources(settings.group_id, settings.requests_topic,
                                settings.results_topic, settings.dead_letter_topic,
                                settings.engagements_topic)
    expected = (worker_acls(principal["worker"], resources, exactly_once=True,
                            creates_topics="topics" not in services)
                + producer_acls(principal["producer"], settings.requests_topic)
                + reader_acls(principal["results"], [settings.results_topic,
                                                     settings.dead_letter_topic]))
    broker_dir, _, bootstrap = services["access"]["entrypoint"][2:5]
    lines = [line for line in (SETUP / "acls.sh").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == [acl.command(bootstrap, f"{broker_dir}/admin.properties")
                     for acl in expected]
    advertised = listeners(env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    assert bootstrap == advertised[env_of(services["kafka"])["KAFKA_INTER_BROKER_LISTENER_NAME"]]


def test_secured_start_order(services):
    def waits_for(name: str) -> dict[str, str]:
        raw = services[name].get("depends_on") or {}
        return {dep: spec["condition"] for dep, spec in raw.items()}

    assert waits_for("kafka") == {"secrets": "service_completed_successfully"}
    assert waits_for("topics")["kafka"] == "service_healthy"
    assert waits_for("access") == {"topics": "service_completed_successfully"}
    for name in ("worker", "worker-gpu"):
        assert waits_for(name)["access"] == "service_completed_successfully"
    assert services["worker-gpu"]["profiles"] == ["gpu"]  # still opt-in
    for name in ("secrets", "access"):
        assert services[name]["restart"] == "no"


# ----------------------------------------------------------------------------- for real


class HostStack:
    """Container paths and ports of the secured stack, moved to this host."""

    def __init__(self, tmp_path: Path, kafka_home: Path, services: dict[str, dict[str, Any]]):
        self.tmp = tmp_path
        self.home = kafka_home
        self.services = services
        self.broker_dir = tmp_path / "kafka-secrets"
        self.client_dir = tmp_path / "ranker-secrets"
        bound = re.findall(r"://[^:,]*:(\d+)", env_of(services["kafka"])["KAFKA_LISTENERS"])
        self.ports = {port: free_port(HOST) for port in [*bound, "9100"]}
        self.paths = {"/opt/kafka/": f"{kafka_home}/", "/etc/kafka/secrets": str(self.broker_dir),
                      "/run/ranker-secrets": str(self.client_dir), "/setup/": f"{tmp_path}/setup/",
                      "/app/": f"{ROOT}/", "/var/lib/ranker/jax-cache": str(ROOT / ".cache" / "jax")}
        shutil.copytree(SETUP, tmp_path / "setup")
        for script in (tmp_path / "setup").iterdir():  # acls.sh names kafka:9094 and paths
            script.write_text(self.here(script.read_text()))
        keytool_dir = Path(java_binary()).resolve().parent
        self.path = f"{keytool_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.outputs: list[str] = []

    def here(self, text: str) -> str:
        text = text.replace("$$", "$")  # compose's escape
        for container, host in self.paths.items():
            text = text.replace(container, host)
        return moved_to_host(text, self.ports)

    def environ(self, name: str, **extra: str) -> dict[str, str]:
        env = {k: self.here(v) for k, v in env_of(self.services[name]).items()}
        base = {k: v for k, v in host_environ().items() if not k.startswith("RANKER_")}
        return {**base, **env, "PATH": self.path, "KAFKA_HOME": str(self.home), **extra}

    def argv(self, name: str) -> list[str]:
        service = self.services[name]
        entry = service.get("entrypoint") or []
        command = service.get("command") or []
        command = shlex.split(command) if isinstance(command, str) else command
        return [self.here(str(part)) for part in [*entry, *command]]

    def run(self, name: str, argv: list[str] | None = None, timeout: float = 180.0,
            **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv or self.argv(name), env=self.environ(name, **extra),
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        self.outputs.append(done.stdout + done.stderr)
        return done

    def passwords(self) -> list[str]:
        files = [*self.client_dir.glob("*.password"), *self.broker_dir.glob("*_creds")]
        return [path.read_text().strip() for path in files]


@pytest.fixture
def stack(tmp_path: Path, kafka_home: Path, services) -> Iterator[HostStack]:  # noqa: F811
    host = HostStack(tmp_path, kafka_home, services)
    made = host.run("secrets")
    assert made.returncode == 0, made.stderr
    env = host.environ("kafka", KAFKA_SECRETS_DIR=str(host.broker_dir),
                       KAFKA_LOG_DIRS=str(tmp_path / "data"))
    with entrypoint_broker(kafka_home, env, host.ports["9094"], tmp_path):
        yield host


def wait_ready(worker: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"the worker exited {worker.returncode}:\n{tail(log_path)}"
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the worker was not ready within {READY_TIMEOUT_S:.0f} s:\n{tail(log_path)}")


@pytest.mark.kafka
def test_the_secured_stack_ranks_end_to_end_on_this_host(stack: HostStack):
    check = stack.services["kafka"]["healthcheck"]["test"]
    deadline = time.monotonic() + 60
    while (health := stack.run("kafka", ["/bin/sh", "-c", stack.here(check[1])])).returncode:
        assert time.monotonic() < deadline, f"the health check never passed:\n{health.stderr}"
        time.sleep(1)
    topics = stack.run("topics")
    assert topics.returncode == 0, f"topics step:\n{topics.stdout}\n{topics.stderr}"
    access = stack.run("access")
    assert access.returncode == 0, f"access step:\n{access.stdout}\n{access.stderr}"

    log_path = stack.tmp / "worker.log"
    worker_env = stack.environ("worker", RANKER_DATA_DIR=str(stack.tmp / "faust"),
                               RANKER_METRICS_PORT=str(stack.ports["9100"]))
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.app", "--batch-buckets", TEST_BUCKETS,
             "--max-candidates", TEST_MAX_CANDIDATES], env=worker_env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_ready(worker, stack.ports["9100"], log_path)
        argv = stack.argv("producer")
        argv[argv.index("--count") + 1] = str(REQUESTS)
        argv[argv.index("--rate") + 1] = "200"
        produced = stack.run("producer", [sys.executable, *argv[1:]])
        assert produced.returncode == 0, produced.stderr
        assert f"produced {REQUESTS} events" in produced.stderr

        # The viewer from the host, through the published HOST listener (localhost:29092).
        viewer = [sys.executable, *stack.argv("results")[1:], "--json", "--count",
                  str(REQUESTS), "--idle-timeout-s", "60"]
        viewer[viewer.index("--bootstrap") + 1] = f"{HOST}:{stack.ports['29092']}"
        viewed = stack.run("results", viewer)
        assert viewed.returncode == 0, viewed.stderr
        answers = [json.loads(line) for line in viewed.stdout.splitlines()]
        assert len(answers) == REQUESTS, viewed.stderr
        ranked = [answer for answer in answers if "ranked" in answer]
        assert len(ranked) >= REQUESTS // 2, answers  # the rest: the producer's bad requests
        assert {answer["request_id"] for answer in answers if answer.get("request_id")} <= {
            answer.get("request_id") for answer in answers}

        # The viewer's user may read results, not send requests.
        impostor = stack.run("producer", [sys.executable, *argv[1:]],
                             RANKER_SASL_USERNAME="viewer",
                             RANKER_SASL_PASSWORD_FILE=str(stack.client_dir / "viewer.password"))
        assert impostor.returncode == 2, impostor.stderr
        assert impostor.stderr.splitlines()[-1].startswith("error: not authorized: "), (
            impostor.stderr)
        assert "'ranking-requests'" in impostor.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        stack.outputs.append(log_path.read_text(errors="replace"))
    stack.outputs.append((stack.tmp / "broker.log").read_text(errors="replace"))
    for password in stack.passwords():
        assert not any(password in text for text in stack.outputs), "a password was printed"
