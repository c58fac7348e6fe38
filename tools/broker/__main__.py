"""`python -m tools.broker [--port 9092] [--partitions 4]`: starts a broker, creates the
wire-contract topics and stays in the foreground until SIGINT/SIGTERM.

`--kind kafka` runs Apache Kafka instead, its data kept in `--data-dir` (`--nodes 3`: a
replicated cluster). `--listener BIND:PORT=HOST:PORT` adds a listener that advertises another
address (a container's network and its host): Apache Kafka serves it itself, the embedded
broker through a proxy that rewrites its metadata answers (tools/listener_proxy.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from pathlib import Path

from aiokafka.errors import KafkaError

from tools.apache_kafka import ApacheKafka
from tools.broker import (DEFAULT_HOST, DEFAULT_PORT, BrokerError, BrokerPrerequisiteError,
                          BrokerProcess, BrokerStartError, EmbeddedBroker, port_free)
from tools.broker.kinds import BROKER_KINDS
from tools.kafka_cluster import KafkaCluster
from tools.listener_proxy import ListenerProxy, parse_address
from worker import topics as wire_topics
from worker.topics import TopicError

def _wire_topics(partitions: int) -> dict[str, int]:
    return {name: partitions for name in wire_topics.DEFAULT_TOPICS}


def _proxy(spec: str, broker_port: int) -> ListenerProxy:
    """'BIND:PORT=HOST:PORT' -> a proxy to this broker (reached on loopback)."""
    bind, sep, advertised = spec.partition("=")
    if not sep:
        raise ValueError(f"--listener expects BIND:PORT=HOST:PORT, got {spec!r}")
    return ListenerProxy(parse_address(bind), upstream=("127.0.0.1", broker_port),
                         advertised=parse_address(advertised))


def _serve_in_thread(proxy: ListenerProxy) -> None:
    """Run `proxy` on its own event loop in a daemon thread; return once it listens."""
    started = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(proxy.serve(ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # listening; a bind error would have ended the task
            started.set()
        await task

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the starting thread if it is still waiting
            failure.append(exc)
            started.set()

    threading.Thread(target=run, name=f"listener-{proxy.bind[1]}", daemon=True).start()
    started.wait()
    if failure:
        raise BrokerStartError(f"listener {proxy.bind[0]}:{proxy.bind[1]}: {failure[0]}")


def _listener_pair(spec: str) -> tuple[str, str]:
    """'BIND:PORT=HOST:PORT' -> ('BIND:PORT', 'HOST:PORT'), both checked."""
    bind, sep, advertised = spec.partition("=")
    if not sep:
        raise ValueError(f"--listener expects BIND:PORT=HOST:PORT, got {spec!r}")
    parse_address(bind)
    parse_address(advertised)
    return bind, advertised


def _make(args: argparse.Namespace) -> tuple[BrokerProcess, list[ListenerProxy]]:
    """The broker `args` ask for (not started), and its further listeners' proxies."""
    pairs = [_listener_pair(spec) for spec in args.listener]
    if args.kind == "kafka" and args.nodes > 1:
        return KafkaCluster(args.nodes, hosts=[args.host] * args.nodes,
                            ports=[args.port + i for i in range(args.nodes)],
                            data_dir=args.data_dir), []
    if args.kind == "kafka":
        # Apache Kafka serves every listener itself; the embedded broker has one, so the
        # others are proxies that rewrite its metadata (tools/listener_proxy.py).
        return ApacheKafka(args.port, host=args.host, advertise=args.advertise,
                           data_dir=args.data_dir, listeners=pairs), []
    broker = EmbeddedBroker(args.port, host=args.host, advertise=args.advertise)
    return broker, [_proxy(spec, args.port) for spec in args.listener]


def _ready_line(broker: BrokerProcess, args: argparse.Namespace) -> str:
    name = broker.title()
    storage = (f"data in {args.data_dir}" if broker.kind == "kafka" else "in-memory")
    return (
        f"{name} ready: bootstrap {broker.bootstrap_servers} ({broker.url}), "
        f"advertised as {args.advertise or broker.bootstrap_servers}, "
        f"pid {', '.join(map(str, broker.pids))}"
        + "".join(f", listener {bind} advertised as {advertised}"
                  for bind, advertised in map(_listener_pair, args.listener))
        + ", topics "
        + (", ".join(f"{n}[{p}]" for n, p in broker.topics.items()) or "none")
        + f"; {storage}, Ctrl-C to stop"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.broker",
        description="Run a Kafka broker with the ranking topics: the embedded tansu broker "
                    "(in-memory, the default) or Apache Kafka (--kind kafka; needs Java 17+ "
                    "and, on first use, Maven to fetch its jars).",
    )
    parser.add_argument("--kind", choices=BROKER_KINDS, default="embedded",
                        help="embedded (tansu, in memory) or kafka (Apache Kafka, KRaft)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (9092)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="listen address (127.0.0.1)")
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of each ranking topic (4)"
    )
    parser.add_argument(
        "--advertise", metavar="HOST:PORT",
        help="address named to clients in metadata (default: the listen address)",
    )
    parser.add_argument(
        "--listener", action="append", default=[], metavar="BIND:PORT=HOST:PORT",
        help="a further listener on BIND:PORT that advertises HOST:PORT (repeatable)",
    )
    parser.add_argument(
        "--no-topics", action="store_true", help="create no topics (something else does)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".cache/kafka/data"),
        help="Apache Kafka's storage, formatted on first use and kept (.cache/kafka/data)",
    )
    parser.add_argument(
        "--nodes", type=int, default=1,
        help="Apache Kafka nodes (3: a replicated cluster on ports PORT, PORT+1, PORT+2)",
    )
    args = parser.parse_args(argv)
    if args.nodes != 1 and (args.kind != "kafka" or args.nodes < 1 or args.listener
                            or args.advertise):
        parser.error("--nodes N > 1 needs --kind kafka, without --listener or --advertise")
    try:
        for spec in args.listener:
            _listener_pair(spec)
        if args.advertise:
            parse_address(args.advertise)
    except ValueError as exc:
        parser.error(str(exc))
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if not port_free(args.host, args.port):
        print(f"broker: error: port {args.port} on {args.host} is already in use; pick another "
              "with --port (make broker BROKER_PORT=...)", file=sys.stderr, flush=True)
        return 2
    broker, proxies = _make(args)
    try:
        broker.start()
        if not args.no_topics:
            broker.create_topics(_wire_topics(args.partitions))
        for proxy in proxies:
            _serve_in_thread(proxy)
        print(_ready_line(broker, args), flush=True)
        while not stop_requested:
            if not broker.is_running:
                print(f"broker exited unexpectedly:\n{broker.log_tail()}", flush=True)
                return 1
            time.sleep(0.2)
    except (BrokerError, TopicError, KafkaError) as exc:
        print(f"broker: error: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, BrokerPrerequisiteError) else 1
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
