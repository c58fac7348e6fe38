"""Which broker a benchmark runs on (`--broker embedded|kafka`) and the client settings that
suit it. The broker itself comes from `tools.broker.kinds.broker_class`, as for `make broker`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable

from tools.broker import BrokerProcess
from tools.broker.kinds import BROKER_KINDS, broker_class
from worker.kafka_clients import topic_config
from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS, Settings
from worker.topics import TopicSpec

DEFAULT_BROKER = "embedded"


@dataclasses.dataclass(frozen=True)
class BrokerTuning:
    """Client settings the bench passes that depend on the broker."""

    # Fetch long-poll wait of every consumer the bench runs or starts: the worker's, the
    # results collector's, the echo floor's and the naive loop's.
    fetch_max_wait_ms: int

    def worker_args(self) -> tuple[str, ...]:
        """The worker flags (worker.app, the Faust floors) that carry these settings."""
        return ("--fetch-max-wait-ms", str(self.fetch_max_wait_ms))


TUNING = {
    # tansu answers a waiting fetch only when the wait runs out (it re-checks in halves of
    # it), so every hop would cost the wait: keep it short.
    "embedded": BrokerTuning(fetch_max_wait_ms=EMBEDDED_BROKER_FETCH_WAIT_MS),
    # Apache Kafka answers a waiting fetch as soon as data arrives, so the wait only bounds an
    # idle poll; its own default (500 ms, the worker's) keeps idle consumers from polling ~100 times a
    # second, CPU the broker would otherwise charge to the requests.
    "kafka": BrokerTuning(fetch_max_wait_ms=Settings.fetch_max_wait_ms),
}


# Why the worker cannot run exactly-once on a broker (absent: it can, and the bench runs both
# guarantees there); the worker itself refuses exactly_once where transactions are missing.
NO_EXACTLY_ONCE = {"embedded": "the embedded broker has no transactions"}


def tuning(kind: str) -> BrokerTuning:
    if kind not in TUNING:
        raise ValueError(f"unknown broker kind {kind!r}; choose one of {', '.join(BROKER_KINDS)}")
    return TUNING[kind]


def title(kind: str) -> str:
    """How reports name the broker: 'embedded broker (tansu)' or 'Apache Kafka <version>'."""
    return broker_class(kind).title()


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", choices=BROKER_KINDS, default=DEFAULT_BROKER,
                        help="the broker to start: embedded (tansu, in memory) or kafka "
                             "(Apache Kafka; needs Java 17+, and Maven on first use)")


def new_broker(kind: str) -> BrokerProcess:
    """A broker of `kind` on a free port, not started (use it as a context manager)."""
    return broker_class(kind)()


def topic_specs(names: Iterable[str], partitions: int) -> list[TopicSpec]:
    """Bench topics with the configs the worker gives its own (e.g. Apache Kafka's 1 MiB
    message limit raised to the worker's publish cap)."""
    config = topic_config(Settings(), replication_factor=1)
    return [TopicSpec(name, partitions, config) for name in names]


def executable(pid: int | None) -> str | None:
    """The program a process runs (e.g. 'java' for Apache Kafka): the CPU the bench reads
    from /proc/<pid>/stat is that process's, all its threads (the JVM's GC and JIT too)."""
    if pid is None:
        return None
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None
