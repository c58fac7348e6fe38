"""An Apache Kafka cluster on one machine: N KRaft nodes, each broker and controller, on
loopback (or on the addresses a test gives them), replicated as production clusters are.

    with KafkaCluster(3) as cluster:             # replication 3, min.insync.replicas 2
        cluster.create_topics({"ranking-requests": 4})
        leader = cluster.leader_of("ranking-requests", 0)
        cluster.node(leader).kill(); ...; cluster.node(leader).start()

`python -m tools.broker --kind kafka --nodes 3` runs one in the foreground.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tools.apache_kafka import LOG_CONFIG, ApacheKafka, classpath, cluster_id, java_binary
from tools.broker import BrokerStartError, TopicsArg, free_port
from worker.topics import ensure_topics, partition_counts

__all__ = ["CLUSTER_CONFIG", "KafkaCluster"]

# Every partition on three nodes, and an acknowledged write (acks=all) on at least two: one
# node may die without losing an acknowledged record or refusing writes. The internal topics
# (offsets, transactions) likewise. A dead node is fenced (its partitions led elsewhere) after
# broker.session.timeout.ms; 3 s instead of Kafka's 9 s keeps the failure tests short.
CLUSTER_CONFIG: Mapping[str, str] = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "unclean.leader.election.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
}
REPLICAS = 3


class KafkaCluster:
    """`size` Apache Kafka nodes forming one KRaft cluster (every node a controller voter).

    `hosts`: the address of each node (default: all on 127.0.0.1, each on its own ports);
    `ports`: each node's client port (default: free ones). `netns`: the network namespace
    each node runs in, where its host address is its own (default ports 9092 and 9093 then). `config` adds to or overrides
    `CLUSTER_CONFIG`. Data lives in `data_dir/node-<id>`, kept; without `data_dir`, in a
    temporary directory that `stop()` deletes. A node's `kill()` and `start()` keep its data.
    """

    kind = "kafka"

    def __init__(self, size: int = 3, *, hosts: Sequence[str] | None = None,
                 ports: Sequence[int] | None = None, data_dir: Path | str | None = None,
                 config: Mapping[str, str] | None = None, start_timeout_s: float = 120.0,
                 netns: Sequence[str] | None = None, **node_options: Any) -> None:
        hosts = list(hosts or ["127.0.0.1"] * size)
        spaces = list(netns or [None] * size)
        # In a namespace of its own each node has its address to itself: Kafka's own ports.
        ports = list(ports or [9092 if netns else free_port(host) for host in hosts])
        if not len(hosts) == len(ports) == size:
            raise ValueError(f"{size} nodes but {len(hosts)} hosts and {len(ports)} ports")
        self.start_timeout_s = start_timeout_s
        self._temporary = None if data_dir else tempfile.TemporaryDirectory(prefix="kafka-")
        root = Path(data_dir) if data_dir else Path(self._temporary.name)
        controllers = [9093 if netns else free_port(host) for host in hosts]
        voters = ",".join(f"{i}@{host}:{port}"
                          for i, (host, port) in enumerate(zip(hosts, controllers), 1))
        shared = cluster_id()  # formats new data directories only: kept ones keep theirs
        self.nodes = [
            ApacheKafka(port, host=host, node_id=i, controller_port=controller, voters=voters,
                        cluster=shared, data_dir=root / f"node-{i}", netns=space,
                        config={**CLUSTER_CONFIG, **(config or {})},
                        start_timeout_s=start_timeout_s, **node_options)
            for i, (host, port, controller, space)
            in enumerate(zip(hosts, ports, controllers, spaces), 1)]
        self._topics: dict[str, int] = {}

    @classmethod
    def title(cls) -> str:
        return f"{ApacheKafka.title()} ({REPLICAS} nodes)"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def url(self) -> str:
        return "kafka://" + ";".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> ApacheKafka:
        return self.nodes[node_id - 1]

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> KafkaCluster:
        """Start every node together, then wait until each serves and every node is a broker
        the controller has registered (before that, topics get fewer replicas)."""
        try:
            for node in self.nodes:
                node.launch()
            deadline = time.monotonic() + self.start_timeout_s
            for node in self.nodes:
                asyncio.run(node.wait_ready(max(1.0, deadline - time.monotonic())))
            asyncio.run(self._wait_for_brokers(deadline))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def running(self) -> list[ApacheKafka]:
        return [node for node in self.nodes if node.is_running]

    @property
    def is_running(self) -> bool:
        return all(node.is_running for node in self.nodes)

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    @property
    def topics(self) -> dict[str, int]:
        return dict(self._topics)

    def log_tail(self) -> str:
        return "\n".join(f"node {node.node_id}:\n{node.log_tail()}" for node in self.nodes)

    async def _wait_for_brokers(self, deadline: float) -> None:
        while True:
            try:
                brokers = await self._admin(lambda admin: admin.describe_cluster())
                if len(brokers["brokers"]) == len(self.nodes):
                    return
            except Exception as error:  # noqa: BLE001 (retried until the deadline)
                brokers = {"error": error}
            if time.monotonic() > deadline:
                raise BrokerStartError(f"the cluster did not register its {len(self.nodes)} "
                                       f"brokers in time: {brokers}")
            await asyncio.sleep(0.5)

    # ---- topics and leaders ---------------------------------------------------------------

    def create_topics(self, topics: TopicsArg, *, timeout_s: float = 30.0) -> None:
        """Each topic with its partitions, on `REPLICAS` nodes."""
        self._topics.update(asyncio.run(ensure_topics(
            self._bootstrap(), topics, replication_factor=REPLICAS, timeout_s=timeout_s)))

    def partition_counts(self, names: Sequence[str]) -> dict[str, int]:
        return asyncio.run(partition_counts(self._bootstrap(), list(names)))

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading `topic[partition]` now."""
        described = asyncio.run(self._admin(lambda admin: admin.describe_topics([topic])))
        for found in described[0]["partitions"]:
            if found["partition"] == partition:
                return found["leader"]
        raise KeyError(f"{topic}[{partition}] not found")

    def in_sync(self, topic: str, partition: int) -> list[int]:
        """The node ids in `topic[partition]`'s in-sync replica set."""
        described = asyncio.run(self._admin(lambda admin: admin.describe_topics([topic])))
        return next(sorted(p["isr"]) for p in described[0]["partitions"]
                    if p["partition"] == partition)

    def coordinator_of(self, group: str, *, timeout_s: float = 60.0) -> int:
        """The node id coordinating consumer group `group` (FindCoordinator; the first call
        on a fresh cluster creates the offsets topic, answered once it has leaders)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return asyncio.run(self._admin(lambda admin: admin.find_coordinator(group)))
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def active_controller(self) -> int:
        """The node id leading the KRaft controller quorum (Kafka's metadata quorum tool)."""
        command = [java_binary(), f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp",
                   classpath(), "org.apache.kafka.tools.MetadataQuorumCommand",
                   "--bootstrap-server", self._bootstrap(), "describe", "--status"]
        shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
        found = re.search(r"^LeaderId:\s+(\d+)", shown.stdout, re.MULTILINE)
        if found is None:
            raise BrokerStartError(f"no quorum leader in: {shown.stdout}{shown.stderr}")
        return int(found.group(1))

    def _bootstrap(self) -> str:
        running = self.running() or self.nodes
        return ",".join(node.bootstrap_servers for node in running)

    async def _admin(self, call: Any) -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap(), request_timeout_ms=5000)
        await admin.start()
        try:
            return await call(admin)
        finally:
            await admin.close()
