"""Producer -> consumer latency on a broker, by client and fetch wait: `python -m bench.consumer_latency`.

Sends one small message at a time (50 ms apart) and times how long a consumer takes to see it,
for each producer (aiokafka as the worker publishes, with and without lz4; librdkafka) and each
consumer fetch wait (librdkafka's default 500 ms, and 10 ms). Starts its own broker
(`--broker embedded|kafka`, embedded by default) unless given `--bootstrap`. Both waits are
measured on either broker: on tansu a fetch returns only when its wait runs out, on Apache
Kafka as soon as data arrives, which is what this shows. A benchmark: prints medians, asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench import brokers
from tools.kafka_io import connection
from worker.topics import ensure_topics

FETCH_WAITS_MS = (500, 10)  # librdkafka's default, and what the worker's own consumer uses


def _consumer(bootstrap: str, topic: str, fetch_wait_ms: int) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms})
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    deadline = time.monotonic() + 3.0  # let the assignment settle at the end of the log
    while time.monotonic() < deadline:
        consumer.poll(0.05)
    return consumer


def median_latency_ms(bootstrap: str, topic: str, send: Callable[[bytes], None],
                      fetch_wait_ms: int, count: int) -> float:
    consumer = _consumer(bootstrap, topic, fetch_wait_ms)
    latencies = []
    try:
        for _ in range(count):
            sent = time.perf_counter()
            send(repr(sent).encode())
            while True:
                message = consumer.poll(2.0)
                if message is not None and message.error() is None:
                    latencies.append((time.perf_counter() - float(message.value())) * 1000)
                    break
            time.sleep(0.05)
    finally:
        consumer.close()
    return statistics.median(latencies)


async def _started_producer(bootstrap: str, options: dict) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**connection(bootstrap), acks="all", **options)
    await producer.start()
    return producer


def run(bootstrap: str, count: int) -> list[tuple[str, int, float]]:
    topic = f"latency-{uuid.uuid4().hex[:8]}"
    rows = []
    loop = asyncio.new_event_loop()
    options = {k: v for k, v in connection(bootstrap).items() if k != "bootstrap_servers"}
    loop.run_until_complete(ensure_topics(bootstrap, {topic: 1}, **options))
    producers: dict[str, Callable[[bytes], None]] = {}
    aiokafka_producers = []
    for name, options in (("aiokafka", {}), ("aiokafka lz4", {"compression_type": "lz4"})):
        producer = loop.run_until_complete(_started_producer(bootstrap, options))
        aiokafka_producers.append(producer)
        producers[name] = (lambda p: lambda value: loop.run_until_complete(
            p.send_and_wait(topic, value)))(producer)
    librdkafka = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

    def librdkafka_send(value: bytes) -> None:
        librdkafka.produce(topic, value)
        librdkafka.flush(10)

    producers["librdkafka"] = librdkafka_send
    try:
        for name, send in producers.items():
            for wait_ms in FETCH_WAITS_MS:
                rows.append((name, wait_ms,
                             median_latency_ms(bootstrap, topic, send, wait_ms, count)))
                print(f"{name:<14} -> librdkafka consumer, fetch.wait.max.ms={wait_ms:<4} "
                      f"p50 {rows[-1][2]:7.1f} ms", flush=True)
    finally:
        for producer in aiokafka_producers:
            loop.run_until_complete(producer.stop())
        loop.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start one, --broker)")
    brokers.add_argument(parser)
    parser.add_argument("--count", type=int, default=40, help="messages per combination")
    args = parser.parse_args(argv)
    if args.bootstrap:
        run(args.bootstrap, args.count)
        return 0
    with brokers.new_broker(args.broker) as broker:
        print(f"{brokers.title(args.broker)} on {broker.bootstrap_servers}", flush=True)
        run(broker.bootstrap_servers, args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
