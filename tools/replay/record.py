"""`replay record`: copy a topic's messages, from its first offsets, into a record file."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

from tools import kafka_io
from tools.recordfile import Record, RecordWriter
from tools.replay.files import ReplayError
from worker.settings import Settings

DEFAULT_IDLE_TIMEOUT_S = 5.0


def record_from_message(message: Any) -> Record:
    """A consumed aiokafka ConsumerRecord as a file record (a null value becomes b"")."""
    return Record(value=message.value if message.value is not None else b"", key=message.key,
                  timestamp_ms=message.timestamp, topic=message.topic,
                  partition=message.partition, offset=message.offset)


async def record_topic(topic: str, path: str, connection: Mapping[str, Any], *,
                       count: int | None = None, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                       progress: bool = True) -> int:
    """Copies `topic` from its first offsets into the record file `path`; returns the count.

    Stops after `count` records or once no record arrived for `idle_timeout_s`. Per-partition
    order is kept (partitions interleave in fetch order). Nothing is committed: there is no
    consumer group, so recording never moves a deployment's offsets.
    """
    await kafka_io.topic_partitions(connection, topic)  # refuse a missing topic by name
    with RecordWriter(path) as out, tqdm(total=count, unit="msg", desc=f"record {topic}",
                                         disable=None if progress else True,
                                         file=sys.stderr, leave=False) as bar:
        async for messages, _ in kafka_io.read_from_start(
                connection, [topic], count=count, idle_timeout_s=idle_timeout_s):
            for message in messages:
                out.write(record_from_message(message))
            bar.update(len(messages))
        return out.count


def command(args: argparse.Namespace, settings: Settings) -> None:
    """`replay record`: prints how many messages it copied."""
    if args.timeout_s <= 0:
        raise ReplayError(f"--timeout-s must be > 0, got {args.timeout_s}")
    connection = kafka_io.connection(args.bootstrap, settings)
    count = asyncio.run(record_topic(args.topic, args.file, connection, count=args.count,
                                     idle_timeout_s=args.timeout_s,
                                     progress=not args.no_progress))
    print(f"recorded {count} messages from {args.topic} on {connection['bootstrap_servers']} "
          f"to {args.file}")
