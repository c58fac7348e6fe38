"""`replay publish`: send a record file's messages to a topic, paced, every one acknowledged."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tools import kafka_io
from tools.pacing import Pace
from tools.recordfile import Record, RecordReader
from tools.replay import files
from worker.settings import Settings

DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # the producer's too_large events are just over 1 MiB


async def publish_records(records: Iterable[Record], topic: str,
                          connection: Mapping[str, Any], *, pace: Pace | None = None,
                          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> int:
    """Sends each record's value and key to `topic` (acks=all), paced; returns the count once
    every send is acknowledged. Raises aiokafka's KafkaError on a failed delivery."""
    from aiokafka import AIOKafkaProducer

    def encode(record: Record) -> kafka_io.Outgoing:
        # Timestamp left to the producer (send time): the recorded one would make the
        # worker's max age expire every replayed request.
        return kafka_io.Outgoing(record.value, record.key)

    async with AIOKafkaProducer(**connection, acks="all", linger_ms=5,
                                max_request_size=max_request_bytes) as producer:
        return await kafka_io.send_paced(producer, topic, records, encode, pace=pace,
                                         recorded_ms=lambda r: r.timestamp_ms)


async def publish_file(path: str, topic: str, connection: Mapping[str, Any], *,
                       pace: Pace | None = None,
                       max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                       progress: bool = True) -> int:
    await kafka_io.topic_partitions(connection, topic)  # refuse before tansu auto-creates it
    with RecordReader(path) as reader, \
            files.progress(path, f"publish {topic}", progress) as bar:
        return await publish_records(files.tracked(reader, bar), topic, connection, pace=pace,
                                     max_request_bytes=max_request_bytes)


def command(args: argparse.Namespace, settings: Settings) -> None:
    """`replay publish`: prints how many messages were sent, how fast, all acknowledged."""
    connection = kafka_io.connection(args.bootstrap, settings)
    topic = args.topic or settings.requests_topic
    pace = Pace(rate=args.rate, recorded=args.recorded_pace)
    start = time.perf_counter()
    sent = asyncio.run(publish_file(args.file, topic, connection, pace=pace,
                                    max_request_bytes=args.max_request_bytes,
                                    progress=not args.no_progress))
    seconds = time.perf_counter() - start
    print(f"published {sent} messages from {args.file} to {topic} on "
          f"{connection['bootstrap_servers']} in {seconds:.2f} s "
          f"({sent / seconds if seconds > 0 else 0:.1f}/s), all acknowledged")
