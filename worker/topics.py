"""Kafka topics: the default names of the wire contract (the one place they are spelled) and
explicit creation with intended partition counts.

Explicit creation matters: a broker that auto-creates topics on first use gives them its own
default count (tansu: always 4), and Faust subscribing first makes that happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.errors import WorkerError

REQUESTS_TOPIC = "ranking-requests"  # input: msgpack ranking-request.v1, keyed by user id
RESULTS_TOPIC = "ranking-results"  # output: msgpack ranking-result.v1, same key as the request
DEAD_LETTER_TOPIC = "ranking-dead-letter"  # msgpack dead-letter.v1 for input we could not answer
# input: msgpack engagement.v1, keyed by user id like requests and co-partitioned with them (the
# same partition count), so a user's engagements and requests reach the same worker.
ENGAGEMENTS_TOPIC = "user-engagements"

DEFAULT_TOPICS: tuple[str, ...] = (REQUESTS_TOPIC, RESULTS_TOPIC, DEAD_LETTER_TOPIC,
                                   ENGAGEMENTS_TOPIC)
# The worker's history table (a Faust table): Faust names its changelog topic after the app id,
# which is the worker's consumer group id, and creates it at start.
HISTORY_TABLE = "user-history"


def history_changelog_topic(group_id: str) -> str:
    """The history table's changelog topic of the worker in consumer group `group_id`."""
    return f"{group_id}-{HISTORY_TABLE}-changelog"


_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error codes
# A secured broker refuses to create a topic for a principal without Create on it, whether
# the topic exists or not: one that exists (and the principal may describe) is used as it is.
_TOPIC_AUTHORIZATION_FAILED = 29
_VISIBLE_POLL_S = 0.05  # real Kafka may list a new topic a moment after creating it


class TopicError(WorkerError, RuntimeError):
    """A topic could not be created, or exists with another partition count."""


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str  # Kafka topic name
    partitions: int = 1  # partition count; never leave it to broker auto-creation
    # Topic-level configs set at creation (e.g. max.message.bytes); {} = the broker's defaults.
    config: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise TopicError("Topic name is empty; give every topic a name.")
        if self.partitions < 1:
            raise TopicError(
                f"Topic {self.name!r} asks for {self.partitions} partitions; use 1 or more."
            )


TopicsArg = Iterable[TopicSpec] | Mapping[str, int]


def as_specs(topics: TopicsArg) -> list[TopicSpec]:
    """`{name: partitions}` or `TopicSpec`s, as a list of `TopicSpec`."""
    if isinstance(topics, Mapping):
        return [TopicSpec(name, partitions) for name, partitions in topics.items()]
    return list(topics)


async def ensure_topics(
    bootstrap_servers: str,
    topics: TopicsArg,
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    strict: bool = True,
    **admin_options: Any,
) -> dict[str, int]:
    """Create each topic with its partition count; with `strict`, a topic that exists must
    already match (otherwise its existing count is accepted and returned).

    `admin_options` go to `aiokafka.admin.AIOKafkaAdminClient` (TLS/SASL settings). Returns
    name -> partitions. Raises `TopicError` when the broker refuses a topic (a principal without
    Create is refused only the topics that do not exist), or when one exists with another
    partition count (e.g. auto-created by a client that used it first).
    """
    specs = as_specs(topics)
    if not specs:
        return {}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **admin_options,
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, replication_factor, topic_configs=dict(s.config))
             for s in specs],
            timeout_ms=int(timeout_s * 1000),
        )
        not_allowed = []
        for name, code, message in (e[:3] for e in response.topic_errors):
            if code == _TOPIC_AUTHORIZATION_FAILED:
                not_allowed.append(name)
            elif code not in (0, _TOPIC_ALREADY_EXISTS):
                raise TopicError(
                    f"The broker at {bootstrap_servers} refused to create topic {name!r}: "
                    f"error {code} ({message})."
                )
        deadline = time.monotonic() + timeout_s
        actual = await _partition_counts(admin, [s.name for s in specs])
        missing = [s.name for s in specs if s.name in not_allowed and s.name not in actual]
        if missing:
            raise TopicError(
                f"Topic {missing[0]!r} does not exist on {bootstrap_servers}, and this client "
                "may not create it (TOPIC_AUTHORIZATION_FAILED); create it first, or grant "
                "the client Create on it (python -m tools.acls lists what the worker needs)."
            )
        while len(actual) < len(specs) and time.monotonic() < deadline:
            await asyncio.sleep(_VISIBLE_POLL_S)
            actual = await _partition_counts(admin, [s.name for s in specs])
    finally:
        await admin.close()
    hidden = [s.name for s in specs if s.name not in actual and s.name not in not_allowed]
    if hidden:  # created or there already, yet not in the metadata this client may see
        raise TopicError(
            f"Topic {hidden[0]!r} exists on {bootstrap_servers}, but this client may not "
            "see it (no Describe: grant the ACL its role needs, Read to consume it or Write "
            "to publish to it, which imply Describe; python -m tools.acls lists what the "
            "worker needs)."
        )
    for spec in specs:
        if actual.get(spec.name) != spec.partitions and (strict or spec.name not in actual):
            raise TopicError(
                f"Topic {spec.name!r} has {actual.get(spec.name)} partitions, not the "
                f"{spec.partitions} asked for; it existed already (auto-created on first use?). "
                "Create topics before any client uses them, or delete it or use another name."
            )
    return {spec.name: actual[spec.name] for spec in specs}


async def cluster_size(bootstrap_servers: str, **admin_options: Any) -> int:
    """How many brokers the cluster has (from a DescribeCluster request)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **admin_options)
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def partition_counts(
    bootstrap_servers: str, names: Iterable[str], **admin_options: Any
) -> dict[str, int]:
    """Partition count of each named topic that exists; missing topics are left out (and not
    created: only a metadata request for *all* topics is sent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **admin_options)
    await admin.start()
    try:
        return await _partition_counts(admin, list(names))
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    # Ask for *all* topics: naming a missing topic in a metadata request makes tansu (and Kafka
    # with auto.create.topics.enable) create it.
    wanted = set(names)
    described = await admin.describe_topics(None)
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if t["topic"] in wanted and t["error_code"] == 0
    }
