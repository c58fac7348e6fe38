"""Topic administration with kafka-topics.sh's flags, for brokers without Kafka's own tools.

The compose stack's `topics` step runs Apache Kafka's `kafka-topics.sh`; with the embedded
broker (docker-compose.embedded-broker.yml) there is no Kafka distribution in the image, so the
same step runs this instead, line for line:

    python -m tools.topics --bootstrap-server kafka:9092 --create --if-not-exists \\
        --topic ranking-requests --partitions 4 --replication-factor 1
    python -m tools.topics --bootstrap-server kafka:9092 --describe
    python -m tools.topics --bootstrap-server localhost:9092 --list   # also a health check

Exit status 0 on success, 1 when the broker refuses or cannot be reached, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tools.kafka_io import connection
from worker.topics import TopicError, ensure_topics, partition_counts

_TIMEOUT_S = 15.0


def _security(bootstrap: str) -> dict[str, Any]:
    """The client security settings (`RANKER_*`, as every tool), without the address."""
    return {k: v for k, v in connection(bootstrap).items() if k != "bootstrap_servers"}


async def _all_topics(bootstrap: str) -> dict[str, int]:
    """name -> partitions of every topic, internal ones left out."""
    admin = AIOKafkaAdminClient(**connection(bootstrap),
                                request_timeout_ms=int(_TIMEOUT_S * 1000))
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics(None)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described
            if t["error_code"] == 0 and not t.get("is_internal")}


async def _create(args: argparse.Namespace) -> str:
    if not args.if_not_exists:
        existing = await partition_counts(args.bootstrap_server, [args.topic],
                                          **_security(args.bootstrap_server))
        if args.topic in existing:
            raise TopicError(f"Topic {args.topic!r} already exists.")
    created = await ensure_topics(args.bootstrap_server, {args.topic: args.partitions},
                                  replication_factor=args.replication_factor,
                                  timeout_s=_TIMEOUT_S, **_security(args.bootstrap_server))
    return f"Topic {args.topic} ready ({created[args.topic]} partitions)."


async def _run(args: argparse.Namespace) -> str:
    if args.create:
        return await _create(args)
    topics = await _all_topics(args.bootstrap_server)
    if args.list:
        return "\n".join(sorted(topics))
    return "\n".join(f"Topic: {name}\tPartitionCount: {count}"
                     for name, count in sorted(topics.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.topics",
        description="Create, list or describe topics (kafka-topics.sh's flags, a subset).")
    parser.add_argument("--bootstrap-server", required=True, metavar="HOST:PORT")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--create", action="store_true")
    action.add_argument("--list", action="store_true")
    action.add_argument("--describe", action="store_true")
    parser.add_argument("--topic")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--if-not-exists", action="store_true")
    args = parser.parse_args(argv)
    if args.create and not args.topic:
        parser.error("--create needs --topic")
    try:
        output = asyncio.run(_run(args))
    except (KafkaError, TopicError, OSError) as exc:
        print(f"error: {args.bootstrap_server}: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
