"""tools/apache_kafka.py without a running broker: the pinned version, the jar cache, the
node's configuration, and the one-line errors when Java or Maven is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools import apache_kafka
from tools.apache_kafka import ApacheKafka, JavaMissing
from tools.launcher import ROOT


def test_the_pom_pins_a_kafka_4_version() -> None:
    major, minor, patch = (int(part) for part in apache_kafka.kafka_version().split("."))
    assert major == 4


def test_a_changed_pom_fetches_its_jars_again(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_bytes(apache_kafka.POM.read_bytes())
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"")
    fetched: list[Path] = []

    def fake_fetch(listing: Path) -> None:  # stands in for Maven
        fetched.append(listing)
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(str(jar))

    monkeypatch.setattr(apache_kafka, "POM", pom)
    monkeypatch.setattr(apache_kafka, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(apache_kafka, "_fetch", fake_fetch)
    assert apache_kafka.classpath() == str(jar)
    assert apache_kafka.classpath() == str(jar)  # cached: no second fetch
    assert len(fetched) == 1
    pom.write_text(pom.read_text().replace("</dependencies>", "<!-- another jar -->"
                                           "</dependencies>"))
    apache_kafka.classpath()
    assert len(fetched) == 2 and fetched[0] != fetched[1]
    jar.unlink()  # a listed jar gone from the cache: fetched again
    apache_kafka.classpath()
    assert len(fetched) == 3


def test_the_node_is_broker_and_controller_with_its_listeners(tmp_path: Path) -> None:
    broker = ApacheKafka(9192, advertise="kafka:9092", listeners=[("0.0.0.0:29092",
                                                                   "localhost:29092")],
                         config={"group.min.session.timeout.ms": "500"})
    config = broker.broker_config(tmp_path)
    assert config["process.roles"] == "broker,controller"
    assert config["listeners"] == (f"PLAINTEXT://127.0.0.1:9192,EXTRA1://0.0.0.0:29092,"
                                   f"CONTROLLER://127.0.0.1:{broker.controller_port}")
    assert config["advertised.listeners"] == "PLAINTEXT://kafka:9092,EXTRA1://localhost:29092"
    assert config["log.dirs"] == str(tmp_path)
    assert config["transaction.state.log.replication.factor"] == "1"
    assert config["group.min.session.timeout.ms"] == "500"


def test_without_java_the_error_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(JavaMissing) as caught:
        apache_kafka.java_binary()
    assert "`java`" in str(caught.value) and "\n" not in str(caught.value)


def test_an_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_402"\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissing, match="needs Java 17\\+, but .* is Java 8"):
        apache_kafka.java_binary()


def test_without_maven_a_fetch_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(apache_kafka, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(JavaMissing, match="`mvn`") as caught:
        apache_kafka.classpath()
    assert "\n" not in str(caught.value)


def test_the_broker_cli_without_java_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.broker", "--kind", "kafka", "--port",
                           "0", "--data-dir", str(tmp_path / "data")],
                          cwd=ROOT, env={"PATH": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("broker: error: Apache Kafka needs `java` on PATH")
