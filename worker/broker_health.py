"""Whether the broker nodes the worker depends on answer it: the readiness check's view of
the cluster, from where the worker runs.

A broker node that crashed is noticed by the cluster, which moves its partitions elsewhere;
one the worker cannot reach while the rest of the cluster can (a network cut between the two
hosts) is not: it stays the leader, and the worker's fetches and sends to it simply get no
answer until the network heals. The worker retries meanwhile and loses nothing, but it is
degraded, and readiness should say so and name the node. So every `interval_s` each node that
leads a partition of the worker's topics gets a cheap request (ApiVersions) on a client of its
own, and a node that has not answered for `timeout_s` is reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Silent:
    """A node that has not answered since `since` (time.monotonic())."""

    node_id: int
    address: str
    since: float
    leads: tuple[str, ...]  # "topic[partition]" it leads among the worker's


class BrokerHealth:
    """Probes the leaders of `topics` from a client built with `client_kwargs`."""

    def __init__(self, client_kwargs: Mapping[str, Any], topics: Sequence[str], *,
                 interval_s: float = 1.0, timeout_s: float = 3.0) -> None:
        self.client_kwargs = {**client_kwargs, "request_timeout_ms": int(timeout_s * 1000)}
        self.topics = list(topics)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._client: AIOKafkaClient | None = None
        self._last_answer: dict[int, float] = {}  # node id -> when it last answered
        self.silent: list[Silent] = []  # nodes silent for at least timeout_s, at the last check

    async def check(self) -> list[Silent]:
        """Probes every leader once (concurrently); returns and keeps the silent ones."""
        client = await self._started()
        try:  # leaders move: ask for them again (any node that answers will do)
            await asyncio.wait_for(client.force_metadata_update(), self.timeout_s)
        except Exception:  # noqa: BLE001 (the last known leaders are probed instead)
            pass
        leaders = self._leaders(client)
        now = time.monotonic()
        answered = await asyncio.gather(*(self._probe(client, node) for node in leaders))
        silent = []
        for node, ok in zip(leaders, answered):
            if ok:
                self._last_answer[node] = time.monotonic()
                continue
            since = self._last_answer.setdefault(node, now)
            if time.monotonic() - since >= self.timeout_s:
                broker = client.cluster.broker_metadata(node)
                address = f"{broker.host}:{broker.port}" if broker else "?"
                silent.append(Silent(node, address, since, tuple(leaders[node])))
        self._log_changes(silent)
        self.silent = silent
        return silent

    def reason(self) -> str | None:
        """Why the worker is degraded (None: every leader answers)."""
        if not self.silent:
            return None
        now = time.monotonic()
        return "; ".join(
            f"broker node {s.node_id} ({s.address}) has not answered for "
            f"{now - s.since:.0f} s; it leads {', '.join(s.leads)}" for s in self.silent)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _started(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(**self.client_kwargs)
            await client.bootstrap()
            for topic in self.topics:  # the client keeps metadata of the topics it is told of
                client.add_topic(topic)
            self._client = client
        return self._client

    def _leaders(self, client: AIOKafkaClient) -> dict[int, list[str]]:
        """Leader node id -> the partitions of the worker's topics it leads."""
        leaders: dict[int, list[str]] = {}
        for topic in self.topics:
            for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
                node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                if node is not None and node >= 0:
                    leaders.setdefault(node, []).append(f"{topic}[{partition}]")
        return leaders

    async def _probe(self, client: AIOKafkaClient, node: int) -> bool:
        try:
            await asyncio.wait_for(client.send(node, ApiVersionRequest()), self.timeout_s)
            return True
        except Exception:  # noqa: BLE001 (any failure to answer is what is measured)
            return False

    def _log_changes(self, silent: list[Silent]) -> None:
        before = {s.node_id for s in self.silent}
        for s in silent:
            if s.node_id not in before:
                log.warning("broker node %d (%s) does not answer this worker; it leads %s",
                            s.node_id, s.address, ", ".join(s.leads))
        for node in before - {s.node_id for s in silent}:
            log.info("broker node %d answers this worker again", node)
