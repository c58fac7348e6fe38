"""`make demo`: the whole stack on the embedded broker, then everything it started is stopped.

embedded broker -> worker (`python -m worker.app`) -> mock producer (world requests, a few
malformed) -> results viewer; prints sample rankings, every dead letter, the worker's metrics
counters (read over HTTP, as Prometheus would) and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tools.broker import EmbeddedBroker, free_port
from tools.launcher import WorkerProcess
from tools.producer import generate_events, send_events_to_kafka
from tools.viewer import Summary, follow, format_dead_letter, format_result, latency_of
from worker.settings import Settings

_SHOW_EVERY = 50  # print every n-th result in full; the summary covers the rest


def _counters(worker: WorkerProcess) -> list[str]:
    """The worker's counters from its Prometheus endpoint."""
    wanted = ("ranker_requests_total", "ranker_results_total", "ranker_dead_letters_total",
              "ranker_compilations", "ranker_batch_size_count", "ranker_batch_size_sum")
    return [line for line in worker.metrics().splitlines() if line.startswith(wanted)]


async def _traffic(settings: Settings, bootstrap: str, count: int, rate: float,
                   bad_fraction: float, worker_started: float) -> Summary:
    events = list(generate_events(seed=7, count=count, bad_fraction=bad_fraction))
    # The world's hidden truth stays in this process: the worker never sees it.
    summary = Summary({e.request_id: e.truth for e in events if e.truth is not None})
    producer = asyncio.ensure_future(send_events_to_kafka(
        events, bootstrap=bootstrap, topic=settings.requests_topic, rate=rate,
        max_request_size=4 << 20))
    first_result: list[float] = []

    def on_message(topic: str, message: dict, arrived_ms: float) -> None:
        if topic == settings.dead_letter_topic:
            summary.add_dead_letter(message)
            print(format_dead_letter(message)[:160], flush=True)
            return
        if not first_result:
            first_result.append(time.monotonic() - worker_started)
        latency = latency_of(message, arrived_ms)
        summary.add_result(message, latency)
        if summary.results % _SHOW_EVERY == 1:
            print(format_result(message, latency), flush=True)

    await follow(settings, [settings.results_topic, settings.dead_letter_topic], on_message,
                 count=count, idle_timeout_s=20, bootstrap=bootstrap)
    await producer
    if first_result:
        print(f"demo: first ranked result {first_result[0]:.1f} s after the worker started")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="requests to send")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--metrics-port", type=int, default=9100)
    args = parser.parse_args(argv)
    settings = Settings.load([])
    with EmbeddedBroker(free_port()) as broker:
        broker.create_topics({settings.requests_topic: settings.partitions,
                              settings.results_topic: settings.partitions,
                              settings.dead_letter_topic: settings.partitions})
        print(f"demo: embedded Kafka broker at {broker.bootstrap_servers}", flush=True)
        worker = WorkerProcess(
            broker.bootstrap_servers, requests=settings.requests_topic,
            results=settings.results_topic, dead_letters=settings.dead_letter_topic,
            partitions=settings.partitions, group_id=settings.group_id,
            checkpoint=settings.checkpoint, metrics_port=args.metrics_port,
            extra_args=("--worker-id", "demo-worker")).start()
        try:
            ready_s = worker.wait_ready(timeout_s=120)
            print(f"demo: worker ready {ready_s:.1f} s after start (model compiled, partitions "
                  f"assigned); metrics at http://127.0.0.1:{args.metrics_port}/metrics",
                  flush=True)
            summary = asyncio.run(_traffic(settings, broker.bootstrap_servers, args.count,
                                           args.rate, args.bad_fraction, worker.started_at))
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
