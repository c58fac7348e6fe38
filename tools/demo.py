"""`make demo`: the whole stack on one broker, then everything it started is stopped.

broker (embedded by default; `--broker kafka`: Apache Kafka) -> worker (`python -m worker.app`) -> mock producer (world requests, a few
malformed) -> results viewer; prints sample rankings, every dead letter, the worker's metrics
counters (read over HTTP, as Prometheus would) and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tools.broker import BrokerPrerequisiteError, BrokerProcess, free_port, port_free
from tools.broker.kinds import BROKER_KINDS, broker_class
from tools.launcher import WorkerProcess
from tools.producer import generate_events, send_events_to_kafka, with_server_history
from tools.viewer import Summary, follow, format_dead_letter, format_result, latency_of, legend
from worker.errors import WorkerError
from worker.kafka_clients import topic_config
from worker.settings import Settings, SettingsError
from worker.topics import TopicSpec

_SHOW_EVERY = 50  # print every n-th result in full; the summary covers the rest


def _counters(worker: WorkerProcess) -> list[str]:
    """The worker's counters from its Prometheus endpoint."""
    wanted = ("ranker_requests_total", "ranker_results_total", "ranker_dead_letters_total",
              "ranker_compilations", "ranker_batch_size_count", "ranker_batch_size_sum",
              'ranker_engagements_total{outcome="applied"}')
    return [line for line in worker.metrics().splitlines() if line.startswith(wanted)]


async def _traffic(settings: Settings, bootstrap: str, count: int, rate: float,
                   bad_fraction: float, worker_started: float,
                   server_history: bool = False) -> Summary:
    events = list(generate_events(seed=7, count=count, bad_fraction=bad_fraction))
    # The world's hidden truth stays in this process: the worker never sees it.
    summary = Summary({e.request_id: e.truth for e in events if e.truth is not None})
    if server_history:  # histories as engagements; requests as v2 without history
        events = list(with_server_history(events))
    producer = asyncio.ensure_future(send_events_to_kafka(
        events, bootstrap=bootstrap, topic=settings.requests_topic, rate=rate,
        max_request_size=4 << 20, engagements_topic=settings.engagements_topic))
    first_result: list[float] = []
    print(legend(), flush=True)

    def on_message(topic: str, message: dict, arrived_ms: float) -> None:
        if topic == settings.dead_letter_topic:
            summary.add_dead_letter(message)
            print(format_dead_letter(message)[:160], flush=True)
            return
        if not first_result:
            first_result.append(time.monotonic() - worker_started)
        latency = latency_of(message)
        summary.add_result(message, latency)
        if summary.results % _SHOW_EVERY == 1:
            print(format_result(message, latency), flush=True)

    await follow(settings, [settings.results_topic, settings.dead_letter_topic], on_message,
                 count=count, idle_timeout_s=20, bootstrap=bootstrap)
    await producer
    if first_result:
        print(f"demo: first ranked result {first_result[0]:.1f} s after the worker started")
    return summary


def _fetch_wait_args(broker: BrokerProcess) -> tuple[str, ...]:
    """The worker's fetch wait for this broker (the embedded one needs a short one)."""
    wait = broker.fetch_wait_ms
    return ("--fetch-max-wait-ms", str(wait)) if wait and not Settings.variable(
        "fetch_max_wait_ms") else ()


def _ports(args: argparse.Namespace, settings: Settings) -> tuple[int, int]:
    """(broker port, metrics port): the ones asked for (flag, or RANKER_METRICS_PORT for
    metrics; 0 = pick one), else free ones. Raises SettingsError for a port that is taken."""
    metrics = args.metrics_port
    if metrics is None and Settings.variable("metrics_port") is not None:
        metrics = settings.metrics_port
    broker_port, metrics_port = args.broker_port or free_port(), metrics or free_port()
    _check_free(broker_port, "--broker-port (make demo BROKER_PORT=...)")
    _check_free(metrics_port, "--metrics-port (make demo METRICS_PORT=..., RANKER_METRICS_PORT)")
    return broker_port, metrics_port


def _check_free(port: int, change_with: str) -> None:
    if not port_free("127.0.0.1", port):
        raise SettingsError(f"port {port} is already in use; pick another with {change_with}, "
                            "or leave it unset for a free one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="requests to send")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--metrics-port", type=int, help="the worker's /metrics port "
                        "(default: RANKER_METRICS_PORT if set, else a free port)")
    parser.add_argument("--broker", choices=BROKER_KINDS, default="embedded",
                        help="embedded (tansu, in memory) or kafka (Apache Kafka; needs Java)")
    parser.add_argument("--broker-port", type=int, help="the broker's port "
                        "(default: a free port)")
    parser.add_argument("--server-history", action="store_true", help="send histories as "
                        "engagements and requests without them (the worker keeps histories)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load([])
        broker_port, metrics_port = _ports(args, settings)
        return _run(args, settings, broker_port, metrics_port)
    except WorkerError as error:  # a setting, Java missing, a broker's or worker's log tail
        print(f"demo: error: {error}", file=sys.stderr, flush=True)
        return 2 if isinstance(error, (SettingsError, BrokerPrerequisiteError)) else 1
    except KeyboardInterrupt:  # everything started was stopped on the way out
        print("demo: interrupted", file=sys.stderr, flush=True)
        return 130


def _run(args: argparse.Namespace, settings: Settings, broker_port: int,
         metrics_port: int) -> int:
    with broker_class(args.broker)(broker_port) as broker:
        config = topic_config(settings, replication_factor=1)
        broker.create_topics([TopicSpec(name, settings.partitions, config) for name in (
            settings.requests_topic, settings.results_topic, settings.dead_letter_topic,
            settings.engagements_topic)])
        print(f"demo: {broker.title()} at {broker.bootstrap_servers}", flush=True)
        worker = WorkerProcess(
            broker.bootstrap_servers, requests=settings.requests_topic,
            results=settings.results_topic, dead_letters=settings.dead_letter_topic,
            partitions=settings.partitions, group_id=settings.group_id,
            checkpoint=settings.checkpoint, metrics_port=metrics_port,
            extra_args=("--worker-id", "demo-worker", *_fetch_wait_args(broker))).start()
        try:
            ready_s = worker.wait_ready(timeout_s=120)
            print(f"demo: worker ready {ready_s:.1f} s after start (model compiled, partitions "
                  f"assigned); metrics at http://127.0.0.1:{metrics_port}/metrics",
                  flush=True)
            summary = asyncio.run(_traffic(settings, broker.bootstrap_servers, args.count,
                                           args.rate, args.bad_fraction, worker.started_at,
                                           args.server_history))
            print("worker metrics (from /metrics):")
            for line in _counters(worker):
                print(f"  {line}")
            print(summary.line(), flush=True)
        finally:
            code = worker.stop(timeout_s=60)
            worker.close()
            print(f"demo: worker stopped (exit code {code}); broker stopped", flush=True)
    return 0 if summary.total == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
