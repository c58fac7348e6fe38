"""Soak run: the real worker under steady load, watching its memory and its backlog.

    python -m tools.soak [--seconds 60] [--rate R] [--max-rss-growth-pct 20]

Starts an embedded broker and the worker (`python -m worker.app`) as a subprocess, measures the
worker's maximum throughput with a burst (unless `--rate` is given), then offers `--load-share`
(80%) of it for `--seconds`. Every `--sample-s` it records the worker's resident memory
(VmRSS from /proc/PID/status) and the backlog: requests acknowledged by the broker minus
results and dead letters received back. (Tansu misreports end offsets, so the backlog is
counted end to end instead of read from the consumer group's lag.)

Exits 1 when the worker dies, the backlog grows steadily (least-squares trend over the run of
more than `--max-backlog-trend` of the rate per second, ending above one second of traffic),
resident memory grows by more than `--max-rss-growth-pct` (median of the last third of the
samples against the first third), or the backlog does not drain afterwards. Not part of
`make test`: it takes minutes (`make soak`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import dataclasses
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

import numpy as np
from aiokafka import AIOKafkaProducer

from tools.broker import EmbeddedBroker
from tools.kafka_io import Outgoing, TopicFollower, connection, send_paced
from tools.pacing import Pace
from tools.launcher import WorkerProcess
from tools.producer import Event, generate_events, now_ms
from worker.errors import WorkerError


class SoakError(WorkerError, RuntimeError):
    """The soak could not run (worker exited or never became ready)."""


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    seconds: float = 60.0  # length of the steady-load phase
    rate: float = 0.0  # requests per second; 0 = load_share of the measured maximum
    load_share: float = 0.8  # share of the measured maximum offered when rate is 0
    measure_count: int = 3000  # burst size for the throughput measurement
    sample_s: float = 5.0  # time between samples
    max_rss_growth_pct: float = 20.0  # median of the last third of samples vs the first third
    max_backlog_trend: float = 0.01  # backlog growth per second, as a share of the rate
    drain_timeout_s: float = 60.0  # time allowed for the backlog to empty after the load
    partitions: int = 4  # of the requests topic
    seed: int = 7  # request stream
    checkpoint: str = "checkpoints/demo.npz"


@dataclasses.dataclass(frozen=True)
class Sample:
    t_s: float  # since the steady load started
    sent: int  # acknowledged by the broker, whole run
    answered: int  # results + dead letters received, whole run
    rss_mb: float

    @property
    def backlog(self) -> int:
        return self.sent - self.answered


def read_rss_mb(pid: int) -> float:
    """Resident memory of `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise SoakError(f"/proc/{pid}/status has no VmRSS line; is the process a zombie?")


def rss_growth_pct(samples: Sequence[Sample]) -> float:
    """Median RSS of the last third of the samples against the first third, in percent:
    allocator and GC swings of a few percent between two single samples are not growth."""
    third = max(1, len(samples) // 3)
    first = float(np.median([s.rss_mb for s in samples[:third]]))
    last = float(np.median([s.rss_mb for s in samples[-third:]]))
    return 100 * (last / first - 1)


def trend_per_s(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over times (0 with fewer than two points)."""
    if len(times) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times), np.asarray(values, dtype=float), 1)[0])


# ----------------------------------------------------------------------------- processes


def soak_worker(bootstrap: str, config: SoakConfig, topics: dict[str, str]) -> WorkerProcess:
    """The worker under soak, as a child process with its own log file and metrics port."""
    return WorkerProcess(
        bootstrap, requests=topics["requests"], results=topics["results"],
        dead_letters=topics["dead_letters"], partitions=config.partitions,
        group_id=f"soak-{uuid.uuid4().hex[:6]}", checkpoint=config.checkpoint,
        extra_args=("--session-timeout-s", "6"), log_prefix="soak-worker-")


# ----------------------------------------------------------------------------- traffic


class Counter(TopicFollower):
    """Results and dead letters received, counted from a background consumer task."""

    def __init__(self, bootstrap: str, topics: Sequence[str]):
        super().__init__(connection(bootstrap), topics)
        self.answered = 0

    def on_records(self, records: list, arrived_ms: float) -> None:
        self.answered += len(records)

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.answered < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.answered >= count


class Sender:
    """Sends events, paced or as fast as possible; `acked` counts the broker's acks."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, events: Iterator[Event]):
        self.producer, self.topic, self.events = producer, topic, events
        self.acked = 0

    def _on_ack(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.acked += 1

    async def send(self, count: int, rate: float = 0.0) -> None:
        def encode(event: Event) -> Outgoing:
            return Outgoing(event.encode(now_ms()), event.key)

        await send_paced(self.producer, self.topic, itertools.islice(self.events, count),
                         encode, pace=Pace(rate=rate), on_ack=self._on_ack)


# ----------------------------------------------------------------------------- the run


async def measure_rate(sender: Sender, counter: Counter, count: int) -> float:
    """Requests per second the worker answers when a burst of `count` waits for it."""
    start = time.monotonic()
    target = counter.answered + count
    await sender.send(count)
    if not await counter.wait_for(target, timeout_s=300):
        raise SoakError(f"only {counter.answered - target + count} of {count} burst requests "
                        "were answered within 300 s")
    return count / (time.monotonic() - start)


async def soak(bootstrap: str, topics: dict[str, str], worker: WorkerProcess,
               config: SoakConfig) -> tuple[float, float, list[Sample], bool]:
    """Returns (measured max rate or 0, offered rate, samples, drained)."""
    events = iter(generate_events(seed=config.seed, count=10**9))
    async with AIOKafkaProducer(**connection(bootstrap), acks="all", linger_ms=2) as producer, \
            Counter(bootstrap, [topics["results"], topics["dead_letters"]]) as counter:
        sender = Sender(producer, topics["requests"], events)
        measured = 0.0
        rate = config.rate
        if rate <= 0:
            measured = await measure_rate(sender, counter, config.measure_count)
            rate = config.load_share * measured
            print(f"measured max throughput: {measured:.0f} req/s ({config.measure_count} "
                  f"requests); soaking at {rate:.0f} req/s ({config.load_share:.0%}) for "
                  f"{config.seconds:.0f} s", flush=True)
        else:
            print(f"soaking at {rate:.0f} req/s for {config.seconds:.0f} s", flush=True)
        count = int(rate * config.seconds)
        started = time.monotonic()
        load = asyncio.create_task(sender.send(count, rate))
        samples: list[Sample] = []
        print(f"{'t_s':>6} {'sent':>8} {'answered':>9} {'backlog':>8} {'rss_mb':>8}", flush=True)
        while not load.done():
            await asyncio.wait([load], timeout=config.sample_s)
            if not worker.alive():
                load.cancel()
                raise SoakError(f"the worker exited with {worker.proc.returncode} during the "
                                f"soak:\n{worker.log()}")
            t_s = time.monotonic() - started
            if samples and t_s - samples[-1].t_s < config.sample_s / 2:
                continue  # the load ended just after a sample
            sample = Sample(t_s, sender.acked, counter.answered, read_rss_mb(worker.proc.pid))
            samples.append(sample)
            print(f"{sample.t_s:6.1f} {sample.sent:8d} {sample.answered:9d} "
                  f"{sample.backlog:8d} {sample.rss_mb:8.1f}", flush=True)
        await load  # raises a failed delivery
        drained = await counter.wait_for(sender.acked, config.drain_timeout_s)
        return measured, rate, samples, drained


def verdict(samples: Sequence[Sample], rate: float, drained: bool,
            config: SoakConfig) -> list[str]:
    """The reasons the run failed (empty: it passed)."""
    if len(samples) < 2:
        return [f"only {len(samples)} samples; run longer than --sample-s"]
    problems = []
    growth = rss_growth_pct(samples)
    if growth > config.max_rss_growth_pct:
        problems.append(f"resident memory grew {growth:.1f}% (median of the last third of "
                        f"the samples against the first third; limit "
                        f"{config.max_rss_growth_pct}%)")
    trend = trend_per_s([s.t_s for s in samples], [s.backlog for s in samples])
    if trend > config.max_backlog_trend * rate and samples[-1].backlog > rate:
        problems.append(f"backlog grows {trend:.1f} req/s per s and ended at "
                        f"{samples[-1].backlog} (> 1 s of traffic)")
    if not drained:
        problems.append(f"the backlog did not drain within {config.drain_timeout_s} s")
    return problems


def run(config: SoakConfig) -> int:
    topics = {"requests": "soak-requests", "results": "soak-results",
              "dead_letters": "soak-dead-letters"}
    with EmbeddedBroker() as broker:
        broker.create_topics({topics["requests"]: config.partitions, topics["results"]: 1,
                              topics["dead_letters"]: 1})
        worker = soak_worker(broker.bootstrap_servers, config, topics).start()
        try:
            worker.wait_ready()
            print(f"soak: broker {broker.bootstrap_servers}, worker pid {worker.proc.pid}",
                  flush=True)
            measured, rate, samples, drained = asyncio.run(
                soak(broker.bootstrap_servers, topics, worker, config))
        except BaseException:
            print(f"worker log kept: {worker.log_path}", file=sys.stderr)
            raise
        finally:
            code = worker.stop()
    first, last = samples[0], samples[-1]
    trend = trend_per_s([s.t_s for s in samples], [s.backlog for s in samples])
    rss = [s.rss_mb for s in samples]
    print(f"RSS start {first.rss_mb:.1f} MiB, end {last.rss_mb:.1f} MiB, range {min(rss):.1f}-"
          f"{max(rss):.1f}, growth {rss_growth_pct(samples):+.1f}% (median of the last third "
          f"against the first); backlog first {first.backlog}, "
          f"last {last.backlog}, max {max(s.backlog for s in samples)}, trend {trend:+.2f} "
          f"req/s per s; drained: {drained}; worker exit code {code}")
    problems = verdict(samples, rate, drained, config)
    if code != 0:
        problems.append(f"the worker exited with {code} on SIGTERM, not 0")
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        print(f"worker log kept: {worker.log_path}")
        return 1
    worker.log_path.unlink()
    print("OK: memory flat and backlog steady")
    return 0


def main(argv: list[str] | None = None) -> int:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="requests per second (0: --load-share of the measured maximum)")
    parser.add_argument("--load-share", type=float, default=defaults.load_share)
    parser.add_argument("--measure-count", type=int, default=defaults.measure_count)
    parser.add_argument("--sample-s", type=float, default=defaults.sample_s)
    parser.add_argument("--max-rss-growth-pct", type=float, default=defaults.max_rss_growth_pct)
    parser.add_argument("--max-backlog-trend", type=float, default=defaults.max_backlog_trend,
                        help="backlog growth per second allowed, as a share of the rate")
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint", default=defaults.checkpoint)
    args = parser.parse_args(argv)
    config = SoakConfig(seconds=args.seconds, rate=args.rate, load_share=args.load_share,
                        measure_count=args.measure_count, sample_s=args.sample_s,
                        max_rss_growth_pct=args.max_rss_growth_pct,
                        max_backlog_trend=args.max_backlog_trend, partitions=args.partitions,
                        seed=args.seed, checkpoint=args.checkpoint)
    if config.seconds < 2 * config.sample_s:
        parser.error(f"--seconds must be at least twice --sample-s ({config.sample_s})")
    try:
        return run(config)
    except WorkerError as error:  # the soak's own, or the worker process exited
        print(f"FAIL: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
