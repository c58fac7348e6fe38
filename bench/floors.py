"""What the host path costs without the model: three floors, same run, same load.

    python -m bench.floors [--broker embedded|kafka]
        (alone, with its own broker of that kind; also part of `make bench`)

Each floor consumes the same demo requests (~3 KB) from a topic and publishes one reply per
request, as fast as the load generator (this process) offers them:
  (a) echo: a plain aiokafka loop (getmany, one send per record, await the acks, commit):
      the lower bound of any Python Kafka worker here;
  (b) pass-through: the worker's own Faust app, consumer and agent loop (`noack_take`, one
      publish per event, ack after the reply's ack), nothing decoded;
  (c) host ceiling: the real worker (`worker.app`) with the model call replaced by a
      precomputed output of the right shape: what it does with an infinitely fast
      accelerator.
For each: replies/s and CPU microseconds per message of the floor's process, the broker
(its whole process: a JVM for Apache Kafka) and the load generator (CPU time, so the figures
hold on a noisy machine). (b) and (c) are benchmark fixtures, not serving options. A
benchmark, not a test: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import brokers
from bench.brokers import BrokerTuning
from bench.load import NATIVE, BenchWorker, CpuMeter, ResultCollector, run_phase
from bench.stats import markdown_table, sustained_rate
from tools.broker import BrokerProcess
from tools.kafka_io import FETCH_WAIT_MS, TopicFollower, connection
from tools.launcher import ROOT
from tools.producer import Event, generate_events, send_events_to_kafka

WARMUP = 500
MESSAGES = 6000
TAKE = 64  # records per getmany / noack_take: the worker's max batch
# (a) and (b) are measured alternately this many times and each reported as its median round:
# one round is a few seconds, and on a shared machine one such window can be 1.5x another.
ROUNDS = 3


# ----------------------------------------------------------------------------- the floors


async def echo(bootstrap: str, source: str, sink: str, group: str,
               fetch_max_wait_ms: int = FETCH_WAIT_MS) -> None:
    """(a): consume, send one reply per record, wait for the acks, commit; forever."""
    consumer = AIOKafkaConsumer(source, **connection(bootstrap), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(**connection(bootstrap), acks="all", linger_ms=0,
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=TAKE)
            acks = [await producer.send(sink, record.value, key=record.key)
                    for records in batches.values() for record in records]
            await asyncio.gather(*acks)
            if acks:
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def pass_through(argv: Sequence[str]) -> None:
    """(b): the worker's Faust app and agent loop; each event's bytes go back out as its
    reply on the results topic, and the event is acked after the reply's ack."""
    from worker.app import new_app, new_event_loop, serve
    from worker.settings import Settings

    settings = Settings.load(argv)
    logging.basicConfig(level=settings.log_level)
    loop = new_event_loop(settings)
    app, topics = new_app(settings)

    @app.agent(topics.requests, concurrency=1)
    async def reply(stream):
        producer = None
        async for events in stream.noack_take(settings.max_batch_size,
                                              within=settings.max_batch_wait_ms / 1000):
            producer = producer or await app.maybe_start_producer()
            acks = [await producer.send(settings.results_topic, e.message.key,
                                        e.message.value, None, None, None) for e in events]
            await asyncio.gather(*acks)
            for event in events:
                await stream.ack(event)

    serve(app, settings, loop)


def host_ceiling(argv: Sequence[str]) -> int:
    """(c): `worker.app` whose model call returns, after the first (real) call of each input
    shape, that call's output again: everything but the accelerator's work."""
    from phoenix.runner import RankingRunner
    from worker import app

    real = RankingRunner.rank_cached
    outputs: dict = {}

    def precomputed(self, batch):
        shape = batch.candidate_post_hashes.shape
        if shape not in outputs:  # warm-up compiles every shape: each is computed once here
            outputs[shape] = real(self, batch)
        return outputs[shape]

    RankingRunner.rank_cached = precomputed
    return app.main(list(argv))


# ----------------------------------------------------------------------------- measuring


class ReplyCounter(TopicFollower):
    """Counts the records on a topic and when each fetch brought them."""

    def __init__(self, bootstrap: str, topic: str, fetch_max_wait_ms: int = FETCH_WAIT_MS):
        super().__init__(connection(bootstrap), [topic], fetch_max_wait_ms)
        self.arrivals: list[float] = []

    def on_records(self, records: list, arrived_ms: float) -> None:
        self.arrivals += [arrived_ms] * len(records)

    async def wait_for(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.arrivals)} of {count} replies arrived in "
                                   f"{timeout_s} s")
            await asyncio.sleep(0.02)


def _child(args: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.floors", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


async def measure_process(name: str, proc: subprocess.Popen, bootstrap: str, source: str,
                          sink: str, broker_pid: int | None, events: Sequence[Event],
                          warmup: Sequence[Event], fetch_max_wait_ms: int = FETCH_WAIT_MS
                          ) -> dict:
    """Warm-up (until its replies are back: joined and running), then the timed load."""
    try:
        async with ReplyCounter(bootstrap, sink, fetch_max_wait_ms) as counter:
            await send_events_to_kafka(warmup, bootstrap=bootstrap, topic=source)
            await counter.wait_for(len(warmup), timeout_s=180)
            start = len(counter.arrivals)
            cpu = CpuMeter(proc.pid, broker_pid)
            cpu.start()
            await send_events_to_kafka(events, bootstrap=bootstrap, topic=source)
            await counter.wait_for(start + len(events))
            cpu_us = cpu.stop(len(events))
            rate = sustained_rate(counter.arrivals[start:start + len(events)])
    finally:
        proc.terminate()
        proc.wait(30)
    return {"floor": name, "messages": len(events), "msgs_per_s": rate, "cpu_us": cpu_us}


async def measure_ceiling(bootstrap: str, topics: dict, checkpoint: str, partitions: int,
                          broker_pid: int | None, events: Sequence[Event],
                          warmup: Sequence[Event], tuning: BrokerTuning) -> dict:
    worker = await asyncio.to_thread(BenchWorker(
        bootstrap, topics["source"], topics["sink"], topics["dead"], checkpoint, partitions,
        extra_args=tuning.worker_args(), entry=("-m", "bench.floors", "ceiling")).start)
    try:
        async with ResultCollector(bootstrap, topics["sink"],
                                   tuning.fetch_max_wait_ms) as collector:
            await run_phase("warm-up", warmup, 0.0, bootstrap, topics["source"], collector,
                            worker, broker_pid)
            phase = await run_phase("ceiling", events, 0.0, bootstrap, topics["source"],
                                    collector, worker, broker_pid)
    finally:
        worker.close()
    return {"floor": "(c) host ceiling: worker, model precomputed",
            "messages": len(events), "msgs_per_s": phase["results_req_per_s"],
            "cpu_us": phase["cpu_us_per_request"]}


async def run(broker: BrokerProcess, checkpoint: str = "checkpoints/demo.npz",
              partitions: int = 4, messages: int = MESSAGES, rounds: int = ROUNDS
              ) -> list[dict]:
    """The three floors on `broker` (either kind, each consumer with the fetch wait that
    suits it), the same requests each: (a) and (b) alternately `rounds` times (each reported
    as its median round), then (c) once."""
    events = list(generate_events(301, messages))
    warmup = list(generate_events(300, WARMUP))
    measured: dict[str, list[dict]] = {"echo": [], "pass-through": []}
    for kind in ["echo", "pass-through"] * rounds:
        measured[kind].append(await _measure(kind, broker, checkpoint, partitions, events,
                                             warmup))
    ceiling = await _measure("ceiling", broker, checkpoint, partitions, events, warmup)
    return [median_round(measured["echo"]), median_round(measured["pass-through"]), ceiling]


async def _measure(kind: str, broker: BrokerProcess, checkpoint: str, partitions: int,
                   events: Sequence[Event], warmup: Sequence[Event]) -> dict:
    """One floor, on fresh topics, with its own consumer group."""
    bootstrap, broker_pid = broker.bootstrap_servers, broker.pid
    tuning = brokers.tuning(broker.kind)
    wait_ms = tuning.fetch_max_wait_ms
    run_id = uuid.uuid4().hex[:8]
    topics = {t: f"floor-{kind}-{t}-{run_id}" for t in ("source", "sink", "dead")}
    await broker.create_topics_async(brokers.topic_specs(topics.values(), partitions))
    if kind == "echo":
        proc = _child(["echo", "--bootstrap", bootstrap, "--source", topics["source"],
                       "--sink", topics["sink"], "--group", f"echo-{run_id}",
                       "--fetch-max-wait-ms", str(wait_ms)])
        row = await measure_process("(a) plain aiokafka echo", proc, bootstrap,
                                    topics["source"], topics["sink"], broker_pid, events, warmup,
                                    wait_ms)
    elif kind == "pass-through":
        proc = _child(["pass-through", "--broker", f"kafka://{bootstrap}",
                       "--requests-topic", topics["source"], "--results-topic",
                       topics["sink"], "--dead-letter-topic", topics["dead"],
                       "--partitions", str(partitions), "--group-id", f"pass-{run_id}",
                       "--metrics-port", "0", "--log-level", "WARNING", *tuning.worker_args()])
        row = await measure_process("(b) Faust pass-through: worker app + agent", proc,
                                    bootstrap, topics["source"], topics["sink"], broker_pid,
                                    events, warmup, wait_ms)
    else:
        row = await measure_ceiling(bootstrap, topics, checkpoint, partitions, broker_pid,
                                    events, warmup, tuning)
    print(_line(row), flush=True)
    return row


def median_round(rows: list[dict]) -> dict:
    """The round with the median process CPU per message (its broker and load-generator
    figures with it), with the median messages/s and every round's process CPU."""
    by_cpu = sorted(rows, key=process_us)
    row = dict(by_cpu[(len(rows) - 1) // 2])
    row["msgs_per_s"] = statistics.median(r["msgs_per_s"] for r in rows)
    row["rounds_cpu_us"] = [round(process_us(r), 1) for r in rows]
    return row


def _line(row: dict) -> str:
    cpu = row["cpu_us"] or {}
    return (f"{row['floor']:<45} {row['msgs_per_s']:8.0f} msg/s; CPU us/msg: floor process "
            f"{process_us(row):6.0f}, broker {cpu.get('broker', float('nan')):5.0f}, "
            f"load generator {cpu.get('bench producer + consumer', float('nan')):5.0f}")


def process_us(row: dict) -> float:
    """CPU microseconds per message of the floor's own process (all its threads)."""
    cpu = row["cpu_us"] or {}
    return cpu.get("worker python threads", float("nan")) + cpu.get(NATIVE, 0.0)


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["floor", "messages", "msgs/s", "CPU us/msg: process (python threads)",
         "broker", "load generator", "process, each round"],
        [[r["floor"], r["messages"], r["msgs_per_s"],
          f"{process_us(r):.0f} ({(r['cpu_us'] or {}).get('worker python threads', 0):.0f})",
          (r["cpu_us"] or {}).get("broker"),
          (r["cpu_us"] or {}).get("bench producer + consumer"),
          " ".join(f"{us:.0f}" for us in r.get("rounds_cpu_us", []))] for r in rows])


async def _standalone(args: argparse.Namespace) -> list[dict]:
    with brokers.new_broker(args.broker) as broker:
        print(f"{brokers.title(args.broker)} on {broker.bootstrap_servers}, pid {broker.pid}",
              flush=True)
        return await run(broker, args.checkpoint, messages=args.messages, rounds=args.rounds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "pass-through":
        pass_through(argv[1:])
        return 0
    if argv and argv[0] == "ceiling":
        return host_ceiling(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run_echo = sub.add_parser("echo", help="(a), as a child process of the bench")
    for flag in ("--bootstrap", "--source", "--sink", "--group"):
        run_echo.add_argument(flag, required=True)
    run_echo.add_argument("--fetch-max-wait-ms", type=int, default=FETCH_WAIT_MS)
    brokers.add_argument(parser)
    parser.add_argument("--checkpoint", default="checkpoints/demo.npz")
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", help="results JSON (default bench/floors-<broker>.json)")
    args = parser.parse_args(argv)
    if args.command == "echo":
        asyncio.run(echo(args.bootstrap, args.source, args.sink, args.group,
                         args.fetch_max_wait_ms))
        return 0
    rows = asyncio.run(_standalone(args))
    print("\n" + table(rows))
    out = Path(args.out or f"bench/floors-{args.broker}.json")
    out.write_text(json.dumps({"broker": args.broker, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
