"""Apache Kafka, run by the project: one KRaft node (broker and controller in one JVM).

The jars come from Maven Central through `tools/kafka/pom.xml` (the version is pinned there) and
are cached under `.cache/kafka/`: the first start fetches them (Maven), later starts reuse them.
Storage is formatted on the first start of a data directory; a restart keeps every topic,
record and committed offset, as a real broker does.

    with ApacheKafka() as broker:          # a throw-away data directory, deleted at stop()
        broker.create_topics({"ranking-requests": 4})

`python -m tools.broker --kind kafka` runs one in the foreground with a data directory that
outlives it (`.cache/kafka/data` unless `--data-dir` says otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import contextlib
import fcntl
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.broker import BrokerPrerequisiteError, BrokerProcess, BrokerStartError, free_port
from tools.launcher import ROOT

__all__ = ["ApacheKafka", "JavaMissing", "classpath", "kafka_version"]

KAFKA_DIR = ROOT / "tools" / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG_CONFIG = KAFKA_DIR / "log4j2.properties"
CACHE_DIR = ROOT / ".cache" / "kafka"
MIN_JAVA = 17  # Apache Kafka 4's broker runs on Java 17 or newer
_FETCH_TIMEOUT_S = 900.0
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

# A single node stands in for a cluster: the internal topics get one replica (Kafka's defaults
# of 3 would leave a lone broker unable to create them), and a group's first join is not held
# back 3 s waiting for more members (Kafka's own development config sets 0 as well).
SINGLE_NODE_CONFIG: Mapping[str, str] = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}

# Kafka's launch script runs the broker with G1 and a 1 GiB heap; on the 2-core machines a
# smaller starting heap leaves memory to the worker and the model.
_JVM_OPTIONS = (
    "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


class JavaMissing(BrokerPrerequisiteError):
    """Java or Maven is not installed (or too old): Apache Kafka cannot be fetched or run."""


def kafka_version() -> str:
    """The Apache Kafka version the pom pins."""
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not node.text:
        raise BrokerStartError(f"{POM} names no kafka.version property.")
    return node.text.strip()


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise JavaMissing(f"Apache Kafka needs `{tool}` on PATH ({hint}); install it, or run the "
                          "embedded broker instead (--kind embedded, TEST_BROKER=embedded).")
    return path


def java_binary() -> str:
    """The `java` on PATH, checked to be Java 17 or newer."""
    java = _require("java", f"Java {MIN_JAVA}+; Debian: apt-get install openjdk-17-jre-headless")
    shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', shown.stderr + shown.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_..." names Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise JavaMissing(f"Apache Kafka {kafka_version()} needs Java {MIN_JAVA}+, but `{java}` "
                          f"is Java {major or '?'}; put a newer JDK first on PATH.")
    return java


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (two test runs fetching at once wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def classpath() -> str:
    """The broker's class path, fetching its jars with Maven on first use.

    Maven's local repository is `.cache/kafka/m2` (the jars stay there, listed once in
    `.cache/kafka/<version>/classpath-<pom digest>.txt`). Raises `JavaMissing` without Maven, and
    `BrokerStartError` when the fetch fails.
    """
    # Named after the pom's content: a changed pom (another jar) fetches again.
    pom_digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    listing = CACHE_DIR / kafka_version() / f"classpath-{pom_digest}.txt"
    with _locked(CACHE_DIR / "fetch.lock"):
        if not _complete(listing):
            _fetch(listing)
    return listing.read_text().strip()


def _complete(listing: Path) -> bool:
    if not listing.exists():
        return False
    jars = [Path(p) for p in listing.read_text().strip().split(":") if p]
    return bool(jars) and all(jar.exists() for jar in jars)


def _fetch(listing: Path) -> None:
    mvn = _require("mvn", "Apache Maven fetches the broker's jars; Debian: apt-get install maven")
    listing.parent.mkdir(parents=True, exist_ok=True)
    partial = listing.with_suffix(".partial")
    command = [
        mvn, "--batch-mode", "--quiet", "-f", str(POM),
        f"-Dmaven.repo.local={CACHE_DIR / 'm2'}",
        "dependency:build-classpath",
        "-Dmdep.includeScope=runtime",
        f"-Dmdep.outputFile={partial}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BrokerStartError(f"Maven did not fetch Apache Kafka's jars within "
                               f"{_FETCH_TIMEOUT_S:.0f} s: {' '.join(command)}") from exc
    if done.returncode != 0 or not partial.exists():
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise BrokerStartError(f"Maven could not fetch Apache Kafka {kafka_version()}'s jars "
                               f"(exit {done.returncode}): {' '.join(command)}\n{tail}")
    partial.replace(listing)


def cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes in URL-safe base64, unpadded (22 characters)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(config: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in config.items())


class ApacheKafka(BrokerProcess):
    """One Apache Kafka node in KRaft combined mode (broker + controller), PLAINTEXT.

    `data_dir` None: a data directory inside the broker's work directory, deleted by `stop()`
    (a `restart()` keeps it). `config` adds or overrides broker properties.
    `listeners` adds further PLAINTEXT listeners as `(bind "host:port", advertised "host:port")`,
    as a container needs one for its network and one for the host.
    """

    kind = "kafka"
    keeps_data = True

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: Path | str | None = None,
        config: Mapping[str, str] | None = None,
        listeners: Sequence[tuple[str, str]] = (),
        start_timeout_s: float = 60.0,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(port, start_timeout_s=start_timeout_s, **kwargs)
        self.node_id = node_id
        self.controller_port = controller_port or free_port(self.host)
        # The controller quorum, "id@host:port,...": None is this node alone (and then its
        # internal topics get one replica: SINGLE_NODE_CONFIG).
        self.voters = voters
        self.cluster_id = cluster or cluster_id()  # every node of a cluster formats with it
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.config = dict(config or {})
        self.listeners = list(listeners)

    @classmethod
    def title(cls) -> str:
        return f"Apache Kafka {kafka_version()}"

    def broker_config(self, data_dir: Path) -> dict[str, str]:
        """Every property the node starts with."""
        names = ["PLAINTEXT"] + [f"EXTRA{i}" for i in range(1, len(self.listeners) + 1)]
        binds = [self.bootstrap_servers] + [bind for bind, _ in self.listeners]
        adverts = [self.advertise or self.bootstrap_servers] + [a for _, a in self.listeners]
        controller = f"{self.host}:{self.controller_port}"
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@{controller}",
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(
                [f"{n}://{b}" for n, b in zip(names, binds)] + [f"CONTROLLER://{controller}"]),
            "advertised.listeners": ",".join(f"{n}://{a}" for n, a in zip(names, adverts)),
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                [f"{n}:PLAINTEXT" for n in names] + ["CONTROLLER:PLAINTEXT"]),
            "log.dirs": str(data_dir),
            **(SINGLE_NODE_CONFIG if self.voters is None else {}),
            **self.config,
        }

    def _command(self, work_dir: Path) -> list[str]:
        java = java_binary()
        jars = classpath()
        data_dir = self.data_dir or work_dir / "data"
        properties = work_dir / "server.properties"
        properties.write_text(server_properties(self.broker_config(data_dir)))
        if not (data_dir / "meta.properties").exists():
            self._format(java, jars, properties, work_dir)
        return [java, *_JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                "-cp", jars, "kafka.Kafka", str(properties)]

    def format_options(self) -> list[str]:
        """Further arguments of `kafka-storage format` (records to bootstrap the cluster with,
        such as SCRAM users); none here."""
        return []

    def _format(self, java: str, jars: str, properties: Path, work_dir: Path) -> None:
        """Write the KRaft storage metadata (cluster id, node id) into an empty data dir."""
        command = [java, f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", jars,
                   "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                   "--config", str(properties), "--ignore-formatted", *self.format_options()]
        with (work_dir / "broker.log").open("ab") as log:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=120)
        if done.returncode != 0:
            raise BrokerStartError(f"Formatting Kafka's storage failed (exit {done.returncode}). "
                                   f"Broker log:\n{self.log_tail()}")
