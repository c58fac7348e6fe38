"""The Apache Kafka image `make compose-smoke` builds where `apache/kafka` cannot be pulled
(docker/kafka.Dockerfile), checked without Docker: its scripts run on the host.

The entrypoint runs twice here: with a stand-in `java` that records its command lines (how
`KAFKA_*` variables become broker properties, when storage is formatted), and for real
(`kafka`-marked): with the compose file's `kafka` environment, ports and data directory moved
to this host, it starts Kafka from the jars Maven fetched, answers the compose health check, and
the compose `topics` step creates the wire-contract topics through the repository's
`kafka-topics.sh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import compose_smoke
from tools.apache_kafka import java_binary
from tools.broker import free_port
from worker.topics import DEFAULT_TOPICS, partition_counts

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "kafka.Dockerfile"
SCRIPTS = ROOT / "docker" / "kafka"
IMAGE_HOME = "/opt/kafka"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0

# A stand-in for `java`: records each command line; `StorageTool random-uuid` prints an id.
FAKE_JAVA = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_JAVA_LOG"
case "$*" in *"random-uuid"*) echo "fakeClusterIdAAAAAAAAA" ;; esac
"""


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    with (ROOT / "docker-compose.yml").open(encoding="utf-8") as f:
        return yaml.safe_load(f)["services"]


def property_name(variable: str) -> str:
    """The official image's mapping: KAFKA_FOO_BAR -> foo.bar, `__` -> `_`, `___` -> `-`."""
    words = variable.removeprefix("KAFKA_").lower().split("___")
    return "-".join(".".join(part.replace("\0", "_") for part in w.replace("__", "\0").split("_"))
                    for w in words)


def read_properties(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def host_environ(**extra: str) -> dict[str, str]:
    """This process's environment without anything that configures Kafka's scripts."""
    dropped = ("CLASSPATH", "JAVA_HOME", "CLUSTER_ID")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k not in dropped}
    return {**env, **extra}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    return {str(k): str(v) for k, v in raw.items()}


# ----------------------------------------------------------------------------- stand-in java


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """The image's /opt/kafka on the host (no jars), and a `java` first on PATH that records."""
    home = compose_smoke.stage_kafka_context(tmp_path / "kafka", [], link=True)
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "java").write_text(FAKE_JAVA)
    (fake_bin / "java").chmod(0o755)
    return home


def run_entrypoint(home: Path, env: Mapping[str, str]) -> tuple[subprocess.CompletedProcess[str],
                                                                list[str]]:
    """(the entrypoint's run, each java command line it made) with the stand-in java."""
    log = home.parent / "java.log"
    log.unlink(missing_ok=True)
    path = f"{home.parent / 'fake-bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    done = subprocess.run([str(home / "entrypoint.sh")], capture_output=True, text=True,
                          timeout=60, env=host_environ(**env, PATH=path, KAFKA_HOME=str(home),
                                                       FAKE_JAVA_LOG=str(log)))
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def test_entrypoint_maps_kafka_variables_as_the_official_image(fake_home, services, tmp_path):
    env = {**compose_env(services["kafka"]), "KAFKA_LOG_DIRS": str(tmp_path / "data"),
           "KAFKA_SOME__UNDERSCORED_NAME": "a", "KAFKA_SOME___DASHED": "b",
           "KAFKA_SSL_KEYSTORE_LOCATION": r"C:\keys", "KAFKA_HEAP_OPTS": "-Xmx64m"}
    done, calls = run_entrypoint(fake_home, env)
    assert done.returncode == 0, done.stderr
    written = read_properties(fake_home / "config" / "server.properties")
    expected = {property_name(k): v for k, v in env.items()
                if k.startswith("KAFKA_") and k != "KAFKA_HEAP_OPTS"}
    expected["ssl.keystore.location"] = r"C:\\keys"  # escaped: the properties format reads `\`
    assert written == expected
    assert written["listener.security.protocol.map"].startswith("PLAINTEXT:")
    assert written["some_underscored.name"] == "a" and written["some-dashed"] == "b"
    assert "heap.opts" not in written and "cluster.id" not in written, "JVM settings, not config"
    # The JVM options and the broker class reach java; the heap as given, for every JVM.
    assert calls[-1].endswith(f"kafka.Kafka {fake_home}/config/server.properties")
    assert all(shlex.split(call)[0] == "-Xmx64m" for call in calls)
    assert f"{fake_home}/libs/*" in calls[-1]


def test_entrypoint_formats_storage_on_the_first_start_only(fake_home, services, tmp_path):
    data = tmp_path / "data"
    env = {**compose_env(services["kafka"]), "KAFKA_LOG_DIRS": str(data)}
    done, calls = run_entrypoint(fake_home, env)
    assert done.returncode == 0, done.stderr
    config = f"{fake_home}/config/server.properties"
    assert [c.split(" kafka.tools.", 1)[1] for c in calls if "StorageTool" in c] == [
        f"StorageTool format --cluster-id {env['CLUSTER_ID']} --config {config} "
        "--ignore-formatted"]
    assert "-Xms256m -Xmx1g" in calls[-1], "the broker's heap, not a tool's"
    data.mkdir()
    (data / "meta.properties").write_text("node.id=1\n")  # what formatting leaves
    done, calls = run_entrypoint(fake_home, env)
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if "StorageTool" in c] and "kafka.Kafka" in calls[-1]


def test_entrypoint_without_cluster_id_formats_with_a_new_one(fake_home, services, tmp_path):
    env = {k: v for k, v in compose_env(services["kafka"]).items() if k != "CLUSTER_ID"}
    done, calls = run_entrypoint(fake_home, {**env, "KAFKA_LOG_DIRS": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert "random-uuid" in calls[0]
    assert "format --cluster-id fakeClusterIdAAAAAAAAA " in calls[1]


def test_entrypoint_reads_the_stores_and_their_passwords_from_secret_files(fake_home, services,
                                                                          tmp_path):
    """The official image's convention: stores named in /etc/kafka/secrets, passwords in files
    beside them; the properties get locations and passwords, not the file-name variables."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, text in (("broker.p12", "store"), ("trust.p12", "trust"), ("store_creds", "s3cret"),
                       ("key_creds", "k3y"), ("trust_creds", "tru5t")):
        (secrets / name).write_text(text)
    env = {**compose_env(services["kafka"]), "KAFKA_LOG_DIRS": str(tmp_path / "data"),
           "KAFKA_SECRETS_DIR": str(secrets), "KAFKA_SSL_KEYSTORE_FILENAME": "broker.p12",
           "KAFKA_SSL_KEYSTORE_CREDENTIALS": "store_creds", "KAFKA_SSL_KEY_CREDENTIALS": "key_creds",
           "KAFKA_SSL_TRUSTSTORE_FILENAME": "trust.p12",
           "KAFKA_SSL_TRUSTSTORE_CREDENTIALS": "trust_creds"}
    done, _ = run_entrypoint(fake_home, env)
    assert done.returncode == 0, done.stderr
    config = fake_home / "config" / "server.properties"
    written = read_properties(config)
    assert {k: v for k, v in written.items() if k.startswith("ssl.")} == {
        "ssl.keystore.location": str(secrets / "broker.p12"), "ssl.keystore.password": "s3cret",
        "ssl.key.password": "k3y", "ssl.truststore.location": str(secrets / "trust.p12"),
        "ssl.truststore.password": "tru5t"}
    assert not any(k.startswith("secrets.") for k in written)
    assert config.stat().st_mode & 0o077 == 0, "passwords in a file others may read"
    (secrets / "key_creds").unlink()
    done, calls = run_entrypoint(fake_home, env)
    assert done.returncode == 1 and not [c for c in calls if "kafka.Kafka" in c]
    assert f"KAFKA_SSL_KEY_CREDENTIALS names {secrets}/key_creds, which is missing" in done.stderr


def test_entrypoint_refuses_to_start_unconfigured(fake_home):
    done, calls = run_entrypoint(fake_home, {})
    assert done.returncode == 1 and "no KAFKA_* variables" in done.stderr
    assert calls == []


# ----------------------------------------------------------------------------- image layout


def dockerfile_lines() -> list[str]:
    """Logical instructions: comments dropped, continuations joined."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(encoding="utf-8"), flags=re.M)
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def test_dockerfile_builds_on_the_local_debian_base_with_debians_java():
    lines = dockerfile_lines()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${BASE_IMAGE}"]
    assert f"ARG BASE_IMAGE={compose_smoke.LOCAL_DEBIAN}" in lines
    assert "openjdk-17-jre-headless" in text
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I) and "--mount=" not in text
    copies = {tuple(line.split()[1:]) for line in lines if line.startswith("COPY ")}
    assert copies == {("libs/", f"{IMAGE_HOME}/libs/"), ("config/", f"{IMAGE_HOME}/config/"),
                      ("bin/", f"{IMAGE_HOME}/bin/"), ("entrypoint.sh", "/etc/kafka/docker/run")}
    assert lines[-1] == 'CMD ["/etc/kafka/docker/run"]'
    assert any(line.startswith("USER ") and "root" not in line for line in lines)


def test_staged_context_holds_what_the_dockerfile_copies(tmp_path):
    jar = tmp_path / "kafka-tools-9.9.9.jar"
    jar.write_bytes(b"PK")
    context = compose_smoke.stage_kafka_context(tmp_path / "context", [jar])
    assert (context / "Dockerfile").read_text() == DOCKERFILE.read_text()
    assert (context / "libs" / jar.name).read_bytes() == b"PK" and not (
        context / "libs" / jar.name).is_symlink(), "a build context needs copies"
    assert (context / "config" / "log4j2.properties").read_text() == (
        ROOT / "tools" / "kafka" / "log4j2.properties").read_text()
    for script in [context / "entrypoint.sh", *(context / "bin").iterdir()]:
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
    with pytest.raises(compose_smoke.SmokeError, match="two jars of one name"):
        compose_smoke.stage_kafka_context(tmp_path / "again", [jar, jar])


def test_every_kafka_script_compose_runs_is_in_the_image(services):
    used = set()
    for name in ("kafka", "topics"):
        service = services[name]
        text = yaml.safe_dump([service.get("command"), service.get("healthcheck")])
        used |= set(re.findall(rf"{IMAGE_HOME}/bin/([\w.-]+)", text))
    assert used == {"kafka-topics.sh", "kafka-broker-api-versions.sh"}
    # The secured stack's steps (docker/secured/, run in this image) call theirs by name.
    for script in (ROOT / "docker" / "secured").glob("*.sh"):
        used |= set(re.findall(r"^\s*(kafka-[\w-]+\.sh) ", script.read_text(), re.M))
    assert used >= {"kafka-configs.sh", "kafka-acls.sh"}
    for script in used:
        path = SCRIPTS / "bin" / script
        assert path.is_file() and os.access(path, os.X_OK), f"docker/kafka/bin/{script}"


# ----------------------------------------------------------------------------- for real


def moved_to_host(text: str, ports: Mapping[str, int]) -> str:
    """Compose addresses (kafka:P, localhost:P, :P) -> 127.0.0.1 and this host's free port."""
    def swap(match: re.Match[str]) -> str:
        port = match["port"]
        return f"{HOST}:{ports[port]}" if port in ports else match[0]

    return re.sub(r"(?:\b(?:kafka|localhost))?:(?P<port>\d{2,5})\b", swap, text)


def host_broker_env(service: dict[str, Any], home: Path,
                    data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(environment, compose port -> host port) to run the compose kafka service here."""
    env = compose_env(service)
    bound = re.findall(r"://[^:,]*:(\d+)", env["KAFKA_LISTENERS"])
    ports = {port: free_port(HOST) for port in bound}
    env = {k: moved_to_host(v, ports) for k, v in env.items()}
    env["KAFKA_LOG_DIRS"] = str(data_dir)
    return host_environ(**env, KAFKA_HOME=str(home)), ports


def in_home(text: str, home: Path, ports: Mapping[str, int]) -> str:
    """A compose command line run on the host: the staged /opt/kafka, the moved ports."""
    return moved_to_host(text.replace(f"{IMAGE_HOME}/", f"{home}/"), ports)


@pytest.fixture
def kafka_home(tmp_path: Path) -> Path:
    """The image's /opt/kafka, staged with links to the repository's scripts and Maven's jars.
    Java and Maven are prerequisites of `make test`: without them this fails, naming them."""
    java_binary()
    jars = compose_smoke.kafka_jars()
    return compose_smoke.stage_kafka_context(tmp_path / "kafka", jars, link=True)


@pytest.fixture
def compose_broker(kafka_home: Path, services, tmp_path: Path) -> Iterator[dict[str, int]]:
    """The compose kafka service's environment, run by the image's entrypoint on this host;
    yields compose port -> host port. The JVM (the entrypoint execs it) is stopped after."""
    env, ports = host_broker_env(services["kafka"], kafka_home, tmp_path / "data")
    with entrypoint_broker(kafka_home, env, ports["9092"], tmp_path) as broker:
        yield ports
    assert broker.returncode in (0, 143, -signal.SIGTERM), (
        f"the broker did not stop cleanly on SIGTERM ({broker.returncode})")


@contextlib.contextmanager
def entrypoint_broker(home: Path, env: Mapping[str, str], port: int,
                      directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The image's entrypoint run here with `env` (its log: directory/broker.log), once it
    listens on `port`; stopped (SIGTERM) on the way out."""
    log_path = directory / "broker.log"
    with log_path.open("wb") as log:
        broker = subprocess.Popen([str(home / "entrypoint.sh")], env=env, cwd=directory,
                                  stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(broker, port, log_path)
        yield broker
    finally:
        stop(broker)


def wait_for_port(broker: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            pytest.fail(f"the entrypoint exited {broker.returncode}:\n{tail(log_path)}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.25)
    pytest.fail(f"no listener on {HOST}:{port} within {START_TIMEOUT_S:.0f} s:\n{tail(log_path)}")


def stop(broker: subprocess.Popen[bytes]) -> None:
    """SIGTERM as `docker stop` sends it; the process group killed if it does not end."""
    if broker.poll() is not None:
        return
    broker.terminate()
    try:
        broker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_health_check(service: dict[str, Any], home: Path, ports: Mapping[str, int]) -> None:
    """The compose health check (CMD-SHELL) until it passes, as Docker would retry it."""
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        done = subprocess.run(["/bin/sh", "-c", in_home(command, home, ports)],
                              env=host_environ(), timeout=60)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, "the kafka health check never passed"
        time.sleep(1)


@pytest.mark.kafka
def test_compose_kafka_and_topics_services_run_on_the_host(compose_broker, kafka_home,
                                                           services):
    ports = compose_broker
    run_health_check(services["kafka"], kafka_home, ports)
    topics = services["topics"]
    argv = [*topics["entrypoint"], *(in_home(part, kafka_home, ports).replace("$$", "$")
                                     for part in topics["command"])]
    env = {k: in_home(v, kafka_home, ports) for k, v in compose_env(topics).items()}
    done = subprocess.run(argv, env=host_environ(**env), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"the topics step failed:\n{done.stdout}\n{done.stderr}"
    bootstrap = f"{HOST}:{ports['9092']}"
    counts = asyncio.run(partition_counts(bootstrap, DEFAULT_TOPICS))
    assert counts == {name: 4 for name in DEFAULT_TOPICS}
    assert done.stdout.count("PartitionCount: 4") == len(DEFAULT_TOPICS), done.stdout
