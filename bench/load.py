"""The Kafka side of the end-to-end benchmark (`bench/e2e.py`).

- `BenchWorker`: the real worker (`python -m worker.app`) as a subprocess, with its metrics;
- `ResultCollector`: an aiokafka consumer in the bench process that records when each result
  arrives; `DeadLetterCollector` the same for dead letters (requests refused or expired);
- `offer`: the mock producer offers load at a rate, with the worker's metrics and CPU read
  around it; `run_phase` on top of it: latency is the producer's `timestamp_ms` (echoed as
  `request_timestamp_ms`) to the result's arrival;
- `run_naive`: what a user would write first: one aiokafka consume loop, one request at a
  time, the model applied eagerly, each result published and its ack awaited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import statistics
import time
from typing import Any, Awaitable, Callable, NamedTuple, Sequence

import msgpack
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from phoenix.runner import RankingRunner
from bench.stats import bucket_counts, latency_summary, sustained_rate
from worker.assembly import Buckets, widths_for
from worker.errors import WorkerError
from tools.kafka_io import FETCH_WAIT_MS, TopicFollower, connection, start_at_beginning
from worker.pipeline import InputRecord, RankingPipeline
from worker.validation import ValidationLimits
from tools.launcher import WorkerProcess
from tools.producer import Event, send_events_to_kafka


class BenchError(WorkerError, RuntimeError):
    """The benchmark could not run a phase (worker exited, results missing)."""


# ----------------------------------------------------------------------------- the worker


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The worker metrics the bench compares before and after a phase."""

    compilations: float
    results: float
    batch_le: dict[float, float]  # ranker_batch_size cumulative bucket counts by upper bound
    batch_sum: float
    batch_count: float
    stage_sum_s: dict[str, float]  # ranker_stage_seconds sum per stage
    stage_count: dict[str, float]
    # ranker_engagement_visible_lag_seconds cumulative bucket counts by upper bound
    lag_le: dict[float, float] = dataclasses.field(default_factory=dict)
    shed: float = 0.0  # ranker_shed_total: refused by the deadline scheduler, unranked
    dead_letters: dict[str, float] = dataclasses.field(default_factory=dict)  # by code

    @classmethod
    def parse(cls, text: str) -> "Snapshot":
        values: dict[str, float] = {}
        batch_le: dict[float, float] = {}
        stage_sum: dict[str, float] = {}
        stage_count: dict[str, float] = {}
        lag_le: dict[float, float] = {}
        dead_letters: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ranker_batch_size_bucket":
                    batch_le[float(s.labels["le"])] = s.value
                elif s.name == "ranker_engagement_visible_lag_seconds_bucket":
                    lag_le[float(s.labels["le"])] = s.value
                elif s.name == "ranker_stage_seconds_sum":
                    stage_sum[s.labels["stage"]] = s.value
                elif s.name == "ranker_stage_seconds_count":
                    stage_count[s.labels["stage"]] = s.value
                elif s.name == "ranker_dead_letters_total":
                    dead_letters[s.labels["code"]] = s.value
                elif not s.labels:
                    values[s.name] = s.value
        return cls(values.get("ranker_compilations", math.nan),
                   values.get("ranker_results_total", 0.0), batch_le,
                   values.get("ranker_batch_size_sum", 0.0),
                   values.get("ranker_batch_size_count", 0.0), stage_sum, stage_count, lag_le,
                   values.get("ranker_shed_total", 0.0), dead_letters)


def mean_batch(before: Snapshot, after: Snapshot) -> float:
    """Mean requests per ranked batch between two snapshots (nan: no batch)."""
    batches = after.batch_count - before.batch_count
    return (after.batch_sum - before.batch_sum) / batches if batches else math.nan


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Per-label increments of a labelled counter between two snapshots, zeros left out."""
    deltas = {k: int(round(v - before.get(k, 0.0))) for k, v in after.items()}
    return {k: n for k, n in deltas.items() if n}


def stage_means_ms(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Mean milliseconds per batch of each worker stage between two snapshots."""
    out = {}
    for stage, total in after.stage_sum_s.items():
        count = after.stage_count[stage] - before.stage_count.get(stage, 0.0)
        if count > 0:
            out[stage] = (total - before.stage_sum_s.get(stage, 0.0)) / count * 1000.0
    return out


class BenchWorker(WorkerProcess):
    """`python -m worker.app` for the benchmark, with quiet logs and its own group;
    `start()` returns once it is ready."""

    def __init__(self, bootstrap: str, requests: str, results: str, dead_letters: str,
                 checkpoint: str, partitions: int, extra_args: Sequence[str] = (),
                 entry: Sequence[str] = ("-m", "worker.app"), engagements: str | None = None):
        super().__init__(bootstrap, requests=requests, results=results,
                         dead_letters=dead_letters, checkpoint=checkpoint, partitions=partitions,
                         engagements=engagements,
                         group_id=f"bench-{os.getpid()}-{time.time_ns()}",
                         extra_args=("--log-level", "WARNING", *extra_args), entry=entry,
                         log_prefix="bench-worker-")

    def start(self, timeout_s: float = 300.0) -> "BenchWorker":
        super().start()
        self.wait_ready(timeout_s)
        return self

    def snapshot(self) -> Snapshot:
        return Snapshot.parse(self.metrics())

    def close(self) -> None:
        self.stop(timeout_s=20)
        self.log_path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CPU


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _stat_cpu_s(path: str) -> float:
    """user + system CPU seconds from a /proc/.../stat file."""
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


NATIVE = "worker native threads (XLA, JAX: the model)"
LOAD_GENERATOR = "bench producer + consumer"  # this process
CORES_BUSY = "cores busy"  # CPU seconds of all processes per second of the phase


def process_cpu(pid: int) -> float | None:
    """CPU seconds of a whole process (threads that ended included); None where /proc is
    missing."""
    try:
        return _stat_cpu_s(f"/proc/{pid}/stat")
    except OSError:
        return None


@dataclasses.dataclass
class CpuMeter:
    """CPU used by the worker, the broker and this process between `start()` and `stop()`,
    in microseconds per request: where a 2-core machine's capacity goes. The worker's Python
    threads come from its own `ranker_python_threads_cpu_seconds` (`python_cpu`); the rest of
    its CPU is native: XLA's compute pool and JAX's runtime threads, i.e. the model. The
    broker's is its whole process, all threads: for Apache Kafka the JVM (`broker.pid` is the
    `java` process itself), its GC and JIT compiler threads included."""

    worker_pid: int
    broker_pid: int | None
    python_cpu: Callable[[], float] | None = None  # None: all the worker's CPU counts as Python
    _start: tuple | None = None

    def _read(self) -> tuple:
        broker = process_cpu(self.broker_pid) if self.broker_pid else None
        worker = process_cpu(self.worker_pid)
        python = self.python_cpu() if self.python_cpu else worker
        return worker, python, broker, time.process_time(), time.perf_counter()

    def start(self) -> None:
        self._start = self._read()

    def stop(self, requests: int) -> dict[str, float] | None:
        (w0, p0, b0, s0, t0), (w1, p1, b1, s1, t1) = self._start, self._read()
        if None in (w0, w1, p0, p1):
            return None
        per = 1e6 / requests
        out = {"worker python threads": (p1 - p0) * per,
               NATIVE: ((w1 - w0) - (p1 - p0)) * per}
        if b0 is not None and b1 is not None:
            out["broker"] = (b1 - b0) * per
        out[LOAD_GENERATOR] = (s1 - s0) * per
        out["total"] = sum(out.values())
        out[CORES_BUSY] = out["total"] * requests / 1e6 / (t1 - t0)
        return out


# ----------------------------------------------------------------------------- results


class Arrival(NamedTuple):
    """One result as the bench consumer saw it (epoch ms)."""

    sent_ms: int | None  # the producer's timestamp_ms, echoed by the worker
    arrived_ms: float  # when the consumer's fetch returned it
    queue_wait_ms: float  # worker: sent -> its batch formed (producer, broker, fetch, take)
    produced_at_ms: int  # worker: result built (after the model, before publishing)


class DeadLetter(NamedTuple):
    """One dead letter as the bench consumer saw it."""

    code: str  # its error code (`expired`: refused or too late, never ranked)
    arrived_ms: float  # when the consumer's fetch returned it (epoch ms)


class AnswerCollector(TopicFollower):
    """Consumes one topic of answers (msgpack maps with a top-level `request_id`) in the
    background; `arrivals[request_id]` is what `arrival` makes of the first answer to each
    request, later ones count as `duplicates`."""

    what = "answers"  # how `wait_for` names them when some are missing

    def __init__(self, bootstrap: str, topic: str, fetch_max_wait_ms: int = FETCH_WAIT_MS,
                 read_committed: bool = False):
        super().__init__(connection(bootstrap), [topic], fetch_max_wait_ms,
                         "read_committed" if read_committed else "read_uncommitted")
        self.arrivals: dict[str, Any] = {}
        self.duplicates = 0
        self.changed = asyncio.Event()  # set on every fetch; `wait_for_answers` clears it

    def arrival(self, message: dict, arrived_ms: float) -> Any:
        raise NotImplementedError

    def on_records(self, records: list, arrived_ms: float) -> None:
        for record in records:
            message = msgpack.unpackb(record.value, raw=False)
            request_id = message.get("request_id")
            if request_id is None:  # a dead letter of a record that named no request
                continue
            if request_id in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[request_id] = self.arrival(message, arrived_ms)
        self.changed.set()

    async def wait_for(self, request_ids: Sequence[str], timeout_s: float) -> None:
        """Until each of `request_ids` has its answer here."""
        await wait_for_answers([self], request_ids, timeout_s)


class ResultCollector(AnswerCollector):
    """The results topic's collector, `arrivals[request_id]` an `Arrival`. `read_committed`:
    sees only committed transactions, as a downstream consumer of an exactly-once worker does
    (the latency that counts there)."""

    what = "results"

    def arrival(self, message: dict, arrived_ms: float) -> Arrival:
        return Arrival(message.get("request_timestamp_ms"), arrived_ms,
                       message["timings"]["queue_wait_ms"], message["produced_at_ms"])


class DeadLetterCollector(AnswerCollector):
    """The dead-letter topic's collector, `arrivals[request_id]` a `DeadLetter`: under a
    deadline, a request answered by a dead letter (`expired`) gets no result to wait for."""

    what = "dead letters"

    def arrival(self, message: dict, arrived_ms: float) -> DeadLetter:
        return DeadLetter(message["error"]["code"], arrived_ms)


async def wait_for_answers(collectors: Sequence[AnswerCollector], request_ids: Sequence[str],
                           timeout_s: float) -> None:
    """Until each of `request_ids` has an answer in one of `collectors` (a result or a dead
    letter, say); raises BenchError naming the first still missing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    missing = list(request_ids)
    while True:
        for collector in collectors:  # before looking: an arrival after this sets it again
            collector.changed.clear()
        missing = [r for r in missing if not any(r in c.arrivals for c in collectors)]
        if not missing:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = " or ".join(c.what for c in collectors)
            raise BenchError(f"{len(missing)} of {len(request_ids)} requests got no {what} "
                             f"within {timeout_s} s (first missing: {missing[0]})")
        waits = [asyncio.ensure_future(c.changed.wait()) for c in collectors]
        try:
            await asyncio.wait(waits, timeout=min(remaining, 1.0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


# ----------------------------------------------------------------------------- load phases


@dataclasses.dataclass(frozen=True)
class Offered:
    """One offered load, answered: its requests, how long sending them took, the worker's
    metrics before and after, the CPU per request in between."""

    request_ids: list[str]
    sent_s: float
    before: Snapshot
    after: Snapshot
    cpu_us: dict[str, float] | None


async def offer(events: Sequence[Event], rate: float, bootstrap: str, topic: str,
                worker: BenchWorker, broker_pid: int | None,
                answered: Callable[[list[str]], Awaitable[None]],
                engagements_topic: str | None = None) -> Offered:
    """Offers `events` at `rate` requests per second (0: as fast as possible; engagement
    events go to `engagements_topic` as they come), then awaits `answered(request_ids)`,
    with the worker's metrics and every process's CPU read around it all."""
    before = await asyncio.to_thread(worker.snapshot)
    cpu = CpuMeter(worker.proc.pid, broker_pid,
                   lambda: worker.metric("ranker_python_threads_cpu_seconds"))
    cpu.start()
    started = time.time()
    await send_events_to_kafka(events, bootstrap=bootstrap, topic=topic, rate=rate,
                               **({"engagements_topic": engagements_topic}
                                  if engagements_topic else {}))
    sent_s = time.time() - started
    ids = [e.request_id for e in events if not e.engagement]
    await answered(ids)
    cpu_us = cpu.stop(len(ids))
    after = await asyncio.to_thread(worker.snapshot)
    return Offered(ids, sent_s, before, after, cpu_us)


async def run_phase(name: str, events: Sequence[Event], rate: float, bootstrap: str,
                    topic: str, collector: ResultCollector, worker: BenchWorker,
                    broker_pid: int | None = None, timeout_s: float = 120.0,
                    engagements_topic: str | None = None) -> dict:
    """Offers `events` at `rate` requests per second (see `offer`) and waits for every
    result. Returns the phase's figures (see `bench.e2e` for their meaning)."""
    offered = await offer(events, rate, bootstrap, topic, worker, broker_pid,
                          lambda ids: collector.wait_for(ids, timeout_s),
                          engagements_topic)
    ids, before, after = offered.request_ids, offered.before, offered.after
    arrivals = [collector.arrivals[i] for i in ids]
    timed = [a for a in arrivals if a.sent_ms is not None]
    # Where the latency goes (medians): to the worker's batch, ranking, back to a consumer.
    segments = {
        "to_batch_ms": statistics.median(a.queue_wait_ms for a in timed),
        "in_worker_ms": statistics.median(
            a.produced_at_ms - a.sent_ms - a.queue_wait_ms for a in timed),
        "to_consumer_ms": statistics.median(a.arrived_ms - a.produced_at_ms for a in timed),
    }
    batches = after.batch_count - before.batch_count
    return {
        "phase": name,
        "requests": len(ids),
        "offered_req_per_s": rate if rate > 0 else None,
        "sent_req_per_s": len(ids) / offered.sent_s,
        "results_req_per_s": sustained_rate([a.arrived_ms for a in arrivals]),
        "latency_ms": latency_summary([a.arrived_ms - a.sent_ms for a in timed]),
        "latency_segments_ms": segments,
        "batches": int(batches),
        "mean_batch": mean_batch(before, after),
        "batch_sizes": bucket_counts(before.batch_le, after.batch_le),
        "worker_stage_ms": stage_means_ms(before, after),
        "compilations": [before.compilations, after.compilations],
        "results_published": int(after.results - before.results),
        "cpu_us_per_request": offered.cpu_us,
        "engagement_lag_ms": lag_quantiles_ms(before.lag_le, after.lag_le),
    }


def lag_quantiles_ms(before: dict[float, float], after: dict[float, float]
                     ) -> dict[str, float] | None:
    """p50/p99 engagement-to-visible lag between two snapshots of the worker's histogram,
    interpolated linearly within a bucket (as Prometheus' histogram_quantile does); None
    when no engagement was applied in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    if not counts or counts[-1] <= 0:
        return None
    out = {"count": counts[-1]}
    for q in (0.5, 0.99):
        rank = q * counts[-1]
        i = next(i for i, c in enumerate(counts) if c >= rank)
        if math.isinf(bounds[i]):  # beyond the last finite bound: report that bound
            out[f"p{round(q * 100)}_ms"] = bounds[i - 1] * 1000.0
            continue
        lo, below = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
        share = (rank - below) / (counts[i] - below) if counts[i] > below else 1.0
        out[f"p{round(q * 100)}_ms"] = (lo + (bounds[i] - lo) * share) * 1000.0
    return out


# ----------------------------------------------------------------------------- naive baseline


class _EagerRunner:
    """The runner's surface the pipeline uses, with `rank_cached` applying the model eagerly."""

    def __init__(self, runner: RankingRunner):
        self._runner = runner
        self.config, self.scoring, self.dtype = runner.config, runner.scoring, runner.dtype
        self.model_version = runner.model_version

    def rank_cached(self, batch):
        return self._runner.rank_eager(batch)


async def run_naive(bootstrap: str, events: Sequence[Event], requests_topic: str,
                    results_topic: str, dead_letter_topic: str, checkpoint: str,
                    timeout_s: float = 120.0, fetch_max_wait_ms: int = FETCH_WAIT_MS) -> dict:
    """The baseline loop over a backlog of `events` (sent first): consume one record, decode
    and validate it exactly like the worker, rank it alone with the eager model, publish
    the result and wait for its ack, next. Returns its throughput."""
    runner = RankingRunner.from_checkpoint(checkpoint)
    widths = widths_for(runner.config.candidate_seq_len, ValidationLimits().max_candidates)
    pipeline = RankingPipeline.create(_EagerRunner(runner),
                                      Buckets(batch_sizes=(1,), widths=widths), worker_id="naive")
    warm = events[0]  # the first eager calls fill JAX's op caches: not part of the loop's rate
    warm_record = InputRecord(warm.encode(0), warm.key, requests_topic, 0, 0)
    pipeline.process(pipeline.decode([warm_record]))
    await send_events_to_kafka(events, bootstrap=bootstrap, topic=requests_topic)
    # From the beginning, as the worker's group would read the backlog.
    consumer = await start_at_beginning(connection(bootstrap), [requests_topic],
                                        fetch_max_wait_ms)
    producer = AIOKafkaProducer(**connection(bootstrap), acks="all", linger_ms=0)
    await producer.start()
    done, first, results = 0, None, 0
    deadline = time.monotonic() + timeout_s
    try:
        while done < len(events):
            if time.monotonic() > deadline:
                raise BenchError(f"the naive loop ranked {done} of {len(events)} requests in "
                                 f"{timeout_s} s")
            message = await consumer.getone()
            first = first if first is not None else time.perf_counter()
            record = InputRecord(message.value, message.key, message.topic, message.partition,
                                 message.offset, message.timestamp)
            outcome, = pipeline.process(pipeline.decode([record])).outcomes
            topic = results_topic if outcome.is_result else dead_letter_topic
            await (await producer.send(topic, outcome.value, key=outcome.key))
            results += outcome.is_result
            done += 1
        elapsed = time.perf_counter() - first
    finally:
        await producer.stop()
        await consumer.stop()
    return {"requests": done, "results": results, "seconds": elapsed,
            "req_per_s": done / elapsed}
