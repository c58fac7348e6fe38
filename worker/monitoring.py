"""Prometheus metrics and the readiness check, served on one HTTP port.

`GET /metrics` is the standard exposition (prometheus_client); `GET /ready` answers 200 once
the model is compiled and partitions are assigned, 503 with the reason otherwise.
"""

from __future__ import annotations

import os
import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import ThreadingWSGIServer

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Engagement time to visible in the history table: milliseconds when live, hours for a replay.
_VISIBLE_LAG_BUCKETS = _LATENCY_BUCKETS + (30.0, 60.0, 300.0, 3600.0)


def python_threads_cpu_s() -> float:
    """User + system CPU seconds of this process's live Python threads, from /proc (0.0 where
    there is none). Thread names cannot tell them apart: JAX's native threads are "python" too."""
    total = 0
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
        except OSError:  # no /proc, or the thread just ended
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class WorkerMetrics:
    """Every metric the worker exports, in its own registry (tests may build several)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("ranker_requests", "Records consumed from the request topic",
                                registry=r)
        self.results = Counter("ranker_results", "Ranked results published", registry=r)
        self.dead_letters = Counter("ranker_dead_letters", "Dead letters published, by code",
                                    ["code"], registry=r)
        self.batch_size = Histogram("ranker_batch_size", "Records per ranked batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.latency = Histogram(
            "ranker_request_latency_seconds", "Request timestamp to its result acked by the "
            "broker (results only: the latency a caller sees)", buckets=_LATENCY_BUCKETS,
            registry=r)
        self.queue_wait = Histogram("ranker_queue_wait_seconds",
                                    "Request timestamp to batch start", buckets=_LATENCY_BUCKETS,
                                    registry=r)
        self.model_time = Histogram("ranker_model_seconds", "Jitted model time per batch",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_time = Histogram("ranker_stage_seconds", "Time per batch in each stage",
                                    ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.shed = Counter("ranker_shed", "Requests refused unranked (dead-lettered expired) "
                            "because they were predicted to finish after their deadline",
                            registry=r)
        self.batch_time = Histogram("ranker_batch_seconds", "Time to rank a batch (assemble, "
                                    "model, encode): the scheduler's prediction and the "
                                    "measured time", ["kind"], buckets=_LATENCY_BUCKETS,
                                    registry=r)
        self.compilations = Gauge("ranker_compilations", "XLA compilations in the process so far (any function)", registry=r)
        self.in_flight = Gauge("ranker_in_flight_requests",
                               "Records consumed but not yet answered", registry=r)
        self.consumer_lag = Gauge("ranker_consumer_lag", "Consumer lag per partition "
                                  "(where the broker reports end offsets)", ["partition"],
                                  registry=r)
        self.fetch_deliveries = Gauge(
            "ranker_fetch_deliveries", "Records handed from the fetch loop to the stream so far, "
            "by path: inline (no task) or waited (blocked, interruptible by a rebalance)",
            ["path"], registry=r)
        self.model_results = Counter("ranker_model_results", "Results published, by the "
                                     "version of the model that ranked them", ["version"],
                                     registry=r)
        self.model_info = Gauge("ranker_model_info", "1 for each model version serving (the main one, and a canary)",
                                ["version"], registry=r)
        self.model_load_failures = Counter(
            "ranker_model_load_failures", "New checkpoints refused (the serving model kept)",
            registry=r)
        self.engagements = Counter(
            "ranker_engagements", "Engagements consumed, by outcome: applied (in the history "
            "table), ignored (a duplicate, or older than a full history keeps), dead_letter",
            ["outcome"], registry=r)
        self.engagement_visible_lag = Histogram(
            "ranker_engagement_visible_lag_seconds", "Engagement timestamp_ms to the moment "
            "it is in the history table (the worker's clock; applied engagements only)",
            buckets=_VISIBLE_LAG_BUCKETS, registry=r)
        self.python_cpu = Gauge(
            "ranker_python_threads_cpu_seconds", "CPU seconds used so far by the process's "
            "live Python threads (event loop, Kafka client, decode and ranker threads): the host "
            "path; the rest of the process's CPU is native (XLA's and JAX's own threads)",
            registry=r)
        self.python_cpu.set_function(python_threads_cpu_s)
        self.history_users = Gauge(
            "ranker_history_users", "Users in this worker's history table (memory store; "
            "updated every 5 s)", registry=r)
        self.ready = Gauge("ranker_ready", "1 while GET /ready answers 200 (compiled, "
                           "assigned, recovered, resumed, breaker closed, brokers answering)",
                           registry=r)
        self.recovering = Gauge(
            "ranker_recovering", "1 while the history table is rebuilt from its changelog "
            "(the requests of those partitions wait for it)", registry=r)
        # process_cpu_seconds_total and the rest: the whole process, beside the Python threads.
        prometheus_client.ProcessCollector(registry=r)
        self.breaker_open = Gauge("ranker_breaker_open",
                                  "1 while the dead-letter circuit breaker has stopped "
                                  "consumption", registry=r)
        self.sends_refused = Counter(
            "ranker_sends_refused", "Sends the broker refused for a missing ACL (retried until "
            "granted; the inputs stay unacked meanwhile), by topic", ["topic"], registry=r)
        self.silent_brokers = Gauge(
            "ranker_silent_brokers", "Broker nodes leading a partition of the worker's topics "
            "that have not answered this worker for 3 s (worker.broker_health)", registry=r)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass  # scrapes every few seconds would flood the worker's log


class HealthServer:
    """Serves /metrics and /ready from a daemon thread."""

    def __init__(self, metrics: WorkerMetrics, readiness: Callable[[], tuple[bool, str]],
                 port: int, host: str = "0.0.0.0"):
        self._metrics_app = prometheus_client.make_wsgi_app(metrics.registry)
        self._readiness = readiness
        self._server = make_server(host, port, self._app, ThreadingWSGIServer,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="health-server", daemon=True)

    def _app(self, environ, start_response):
        if environ.get("PATH_INFO") == "/ready":
            ok, reason = self._readiness()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(reason + "\n").encode()]
        return self._metrics_app(environ, start_response)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
