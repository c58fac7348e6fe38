"""The latency-vs-load curve of the worker's two batch policies (`--batch-policy`, issue #27):
how p99 and goodput hold up as the offered load nears and passes the worker's max.

For each policy of `POLICIES`, on a broker, worker and topics of its own, at least once: a
warm-up, a max phase (as fast as possible, no deadline), then a sustained max (paced at that
phase's rate, so the producer and broker load the machine as they do at every point) that
gives the policy's max results/s,
then each fraction of `LOAD_FRACTIONS` of the reference max (the fixed policy's, measured
first, so both policies are offered the same rates) for `curve_seconds`, every request due
`CURVE_DEADLINE_MS` after it is sent. Such a request gets either a result or a dead letter
(`expired`: shed unranked by the deadline scheduler, or found past its deadline when decoded),
so a point waits until every request has one or the other.

Per point: offered, sent and results per second; latency of the results (producer's
`timestamp_ms` to arrival at a consumer) p50/p99/p99.9; goodput, the results that arrived
within their deadline per second of sending; the expired dead letters, and apart from them
what the scheduler shed (the worker's `ranker_shed_total`); mean batch; CPU per request.

Last, an all-shed phase at `OVERLOAD_FRACTION` with every request due when it is sent, so each
is dead-lettered `expired` without model time: its CPU per request is what a shed request costs
the machine (its send, its decode, its dead letter and their trips through the broker).
With the CPU the sustained max kept busy and its CPU per served request, it bounds the goodput
this machine can give at that load at these costs (`goodput_ceiling_per_s`).

Targets (`curve_targets`, same run): the deadline policy's p99 at 50% and 85% against its own
p99 at 10% (light load), its max against the fixed max, its goodput at 120% against the fixed
max. `section` reports the same ratios for the fixed policy beside them, for contrast.

Everything but `run`, `run_policy` and `run_point` is pure (tests/test_bench.py).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import AsyncContextManager, Callable, Iterable, Mapping, Protocol, Sequence

from bench.load import (CORES_BUSY, LOAD_GENERATOR, NATIVE, Arrival, BenchWorker, DeadLetter,
                        DeadLetterCollector, Offered, ResultCollector, counter_deltas,
                        mean_batch, offer, wait_for_answers)
from bench.stats import BenchStatsError, Target, latency_summary, markdown_table
from tools.producer import generate_events
from worker.errors import EXPIRED

POLICIES = ("fixed", "deadline")  # the reference first: its max sets every offered rate
REFERENCE_POLICY = POLICIES[0]
TARGET_POLICY = "deadline"  # held to the targets; the other is reported for contrast
LOAD_FRACTIONS = (0.10, 0.25, 0.50, 0.70, 0.80, 0.85, 1.00, 1.20)  # of the reference max
LIGHT_FRACTION = 0.10  # the light load whose p99 the loaded points are held against
OVERLOAD_FRACTION = 1.20
CURVE_DEADLINE_MS = 100  # every curve request is due this long after it is sent
POINT_TIMEOUT_S = 120.0  # for every request of a point to get its result or dead letter
# Request seeds: the same requests for both policies (on their own topics); points count up.
WARMUP_SEED, MAX_SEED, SUSTAINED_SEED, FIRST_POINT_SEED, ALL_SHED_SEED = 200, 201, 202, 210, 230



class Phases(Protocol):
    """What the curve needs of a ready worker (`bench.e2e.Phases`): its topics, its process,
    the collector of its results, and load phases that wait for every result."""

    bootstrap: str
    broker_pid: int | None
    topics: dict[str, str]
    worker: BenchWorker
    collector: ResultCollector

    async def run(self, name: str, seed: int, count: int, rate: float) -> dict: ...


# A ready at-least-once worker of that batch policy, on fresh topics of its own.
Serve = Callable[[str], AsyncContextManager[Phases]]


# ----------------------------------------------------------------------------- the run


async def run(serve: Serve, seconds: float, warmup_requests: int, max_requests: int) -> dict:
    """Both policies' curves, the reference policy first; each on its own worker."""
    policies: dict[str, dict] = {}
    reference: float | None = None
    for policy in POLICIES:
        async with serve(policy) as phases:
            policies[policy] = await run_policy(phases, policy, reference, seconds,
                                                warmup_requests, max_requests)
        reference = reference or policies[policy]["max_req_per_s"]
    return {"deadline_ms": CURVE_DEADLINE_MS, "reference_policy": REFERENCE_POLICY,
            "reference_max_req_per_s": reference, "seconds_per_point": seconds,
            "policies": policies}


async def run_policy(phases: Phases, policy: str, reference: float | None, seconds: float,
                     warmup_requests: int, max_requests: int) -> dict:
    """Warm-up, max, then every load point at a fraction of `reference` (None: this
    policy's own max, for the reference policy itself)."""
    await phases.run(f"{policy} warm-up", WARMUP_SEED, warmup_requests, 0.0)
    burst = await phases.run(f"{policy} max", MAX_SEED, max_requests, 0.0)
    # Sent at once, requests leave the producer idle while the worker ranks them; paced, the
    # producer and the broker work all along, beside the worker (on 2 cores, about half the
    # CPU). Offered at the burst's rate, the worker falls behind and answers at what it
    # sustains: the max the curve's loads are shares of.
    rate = burst["results_req_per_s"]
    top = await phases.run(f"{policy} sustained max", SUSTAINED_SEED, round(rate * seconds),
                           rate)
    base = reference or top["results_req_per_s"]
    points = []
    async with DeadLetterCollector(phases.bootstrap, phases.topics["dead-letters"],
                                   phases.collector.fetch_max_wait_ms) as letters:
        for i, fraction in enumerate(LOAD_FRACTIONS):
            points.append(await run_point(phases, letters, policy, fraction, fraction * base,
                                          seconds, FIRST_POINT_SEED + i))
        all_shed = await run_point(phases, letters, f"{policy}, all shed", OVERLOAD_FRACTION,
                                   OVERLOAD_FRACTION * base, seconds, ALL_SHED_SEED,
                                   due_after_ms=0)
    return {"burst_max": burst, "max": top, "max_req_per_s": top["results_req_per_s"],
            "points": points, "all_shed": all_shed}


async def run_point(phases: Phases, letters: DeadLetterCollector, policy: str,
                    fraction: float, rate: float, seconds: float, seed: int,
                    due_after_ms: int = CURVE_DEADLINE_MS) -> dict:
    """`rate` requests per second for `seconds`, each due `due_after_ms` after it is sent,
    until each has its result or its dead letter."""
    events = list(generate_events(seed, max(2, round(rate * seconds)),
                                  deadline_after_ms=due_after_ms))
    offered = await offer(events, rate, phases.bootstrap, phases.topics["requests"],
                          phases.worker, phases.broker_pid,
                          lambda ids: wait_for_answers((phases.collector, letters), ids,
                                                       POINT_TIMEOUT_S))
    point = point_figures(fraction, rate, offered, phases.collector.arrivals, letters.arrivals)
    print(point_line(policy, point), flush=True)
    return point


# ----------------------------------------------------------------------------- figures


def within_deadline(arrival: Arrival, deadline_ms: float = CURVE_DEADLINE_MS) -> bool:
    """Whether a result arrived by its deadline (`deadline_ms` after it was sent)."""
    return arrival.sent_ms is not None and arrival.arrived_ms <= arrival.sent_ms + deadline_ms


def goodput_per_s(arrivals: Iterable[Arrival], seconds: float,
                  deadline_ms: float = CURVE_DEADLINE_MS) -> float:
    """Results that arrived within their deadline, per second of the phase: what a caller
    that gives up at the deadline gets (a late result counts for nothing, like a shed one)."""
    if seconds <= 0:
        raise BenchStatsError(f"goodput over {seconds} s; the phase must last")
    return sum(within_deadline(a, deadline_ms) for a in arrivals) / seconds


def point_figures(fraction: float, rate: float, offered: Offered,
                  results: Mapping[str, Arrival], letters: Mapping[str, DeadLetter],
                  deadline_ms: float = CURVE_DEADLINE_MS) -> dict:
    """One load point's figures from its requests' results and dead letters and the worker's
    metrics around it. Rates are per second of sending (`offered.sent_s`), so that goodput
    and results/s compare directly."""
    ids, seconds = offered.request_ids, offered.sent_s
    arrivals = [results[i] for i in ids if i in results]
    timed = [a for a in arrivals if a.sent_ms is not None]
    codes = collections.Counter(letters[i].code for i in ids
                                if i in letters and i not in results)
    before, after = offered.before, offered.after
    return {
        "fraction": fraction,
        "offered_req_per_s": rate,
        "requests": len(ids),
        "seconds": seconds,
        "sent_req_per_s": len(ids) / seconds,
        "results": len(arrivals),
        "results_req_per_s": len(arrivals) / seconds,
        "latency_ms": latency_summary([a.arrived_ms - a.sent_ms for a in timed]) if timed
        else None,
        "within_deadline": sum(within_deadline(a, deadline_ms) for a in arrivals),
        "goodput_req_per_s": goodput_per_s(arrivals, seconds, deadline_ms),
        "dead_letters": dict(codes),
        "expired": codes.get(EXPIRED, 0),
        "shed_by_scheduler": int(round(after.shed - before.shed)),
        "worker_dead_letters": counter_deltas(before.dead_letters, after.dead_letters),
        "mean_batch": mean_batch(before, after),
        "cpu_us_per_request": offered.cpu_us,
    }


def point_line(policy: str, p: dict) -> str:
    """One point as the bench prints it while it runs."""
    lat = p["latency_ms"] or {}
    ms = " ".join(f"{k} {lat.get(f'{k}_ms', math.nan):7.1f}" for k in ("p50", "p99", "p99_9"))
    return (f"{policy:<8} {p['fraction']:>4.0%} offered {p['offered_req_per_s']:7.0f}/s  "
            f"sent {p['sent_req_per_s']:7.0f}/s  results {p['results_req_per_s']:7.0f}/s  "
            f"{ms} ms  goodput {p['goodput_req_per_s']:7.0f}/s  expired {p['expired']} "
            f"(shed {p['shed_by_scheduler']})  mean batch {p['mean_batch']:5.1f}")


def point(points: Sequence[dict], fraction: float) -> dict | None:
    """The point at `fraction` of the reference max, None where it is missing."""
    return next((p for p in points if math.isclose(p["fraction"], fraction)), None)


def p99_ms(p: dict | None) -> float:
    """A point's p99 latency of its results; nan where it has none."""
    return p["latency_ms"]["p99_ms"] if p and p.get("latency_ms") else math.nan


def _divide(numerator: float, denominator: float | None) -> float:
    return numerator / denominator if denominator else math.nan


def _cpu(phase: dict | None) -> dict:
    return (phase or {}).get("cpu_us_per_request") or {}


def goodput_ceiling_per_s(curve: dict, policy: str) -> float:
    """The most goodput per second the machine's CPU allows at `OVERLOAD_FRACTION` of the
    reference max at the measured costs. At its sustained max the policy kept `cores` busy
    at `served_us` of CPU per request (all processes; full batches, its cheapest); a shed
    request costs `shed_us` (the all-shed phase). Serving G of the R offered per second
    takes G * served_us + (R - G) * shed_us <= cores, so G <= (cores - R * shed_us) /
    (served_us - shed_us), between 0 and R. nan where a figure is missing."""
    figures = curve["policies"][policy]
    top, shed = _cpu(figures.get("max")), _cpu(figures.get("all_shed"))
    if CORES_BUSY not in top or "total" not in shed:
        return math.nan
    cores, served_us, shed_us = top[CORES_BUSY], top["total"], shed["total"]
    offered = OVERLOAD_FRACTION * curve["reference_max_req_per_s"]
    if served_us <= shed_us:  # shedding saves nothing: the CPU bounds nothing here
        return offered
    return min(max(0.0, (cores * 1e6 - offered * shed_us) / (served_us - shed_us)), offered)


def goodput_ceiling(curve: dict, policy: str) -> float:
    """`goodput_ceiling_per_s` over the reference max, as the goodput target is."""
    return _divide(goodput_ceiling_per_s(curve, policy), curve["reference_max_req_per_s"])


# ----------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Check:
    """One ratio of a policy's curve and the limit the target policy is held to."""

    label: str
    measure: Callable[[dict, str], float]  # (curve, policy) -> the ratio, nan if missing
    limit: float
    at_least: bool

    def target(self, curve: dict, policy: str = TARGET_POLICY) -> Target:
        return Target(f"{policy} policy: {self.label}", self.measure(curve, policy),
                      self.limit, self.at_least, "x")


def p99_growth(fraction: float) -> Callable[[dict, str], float]:
    """p99 at `fraction` over the same policy's p99 at light load."""
    def measure(curve: dict, policy: str) -> float:
        points = curve["policies"][policy]["points"]
        return _divide(p99_ms(point(points, fraction)), p99_ms(point(points, LIGHT_FRACTION)))
    return measure


def max_over_reference(curve: dict, policy: str) -> float:
    return _divide(curve["policies"][policy]["max_req_per_s"], curve["reference_max_req_per_s"])


def overload_goodput(curve: dict, policy: str) -> float:
    """Goodput at `OVERLOAD_FRACTION` over the reference max: what overload leaves useful."""
    p = point(curve["policies"][policy]["points"], OVERLOAD_FRACTION)
    return _divide(p["goodput_req_per_s"], curve["reference_max_req_per_s"]) if p else math.nan


CHECKS = (
    Check(f"p99 at 50% / its p99 at {LIGHT_FRACTION:.0%}", p99_growth(0.50), 3.0, False),
    Check(f"p99 at 85% / its p99 at {LIGHT_FRACTION:.0%}", p99_growth(0.85), 6.0, False),
    Check(f"max / {REFERENCE_POLICY} max", max_over_reference, 0.95, True),
    Check(f"goodput at {OVERLOAD_FRACTION:.0%} offered / {REFERENCE_POLICY} max",
          overload_goodput, 0.9, True),
)


def curve_targets(curve: dict | None) -> list[Target]:
    """The target policy's checks (none when the curve did not run)."""
    return [check.target(curve) for check in CHECKS] if curve else []


# ----------------------------------------------------------------------------- report


CURVE_HEADERS = ("load", "offered/s", "sent/s", "results/s", "p50 ms", "p99 ms", "p99.9 ms",
                 "goodput/s", "shed (expired)", "of which by scheduler", "mean batch",
                 "CPU us/req", "cores busy")


def _latency(p: dict, key: str) -> float | str:
    return p["latency_ms"][key] if p.get("latency_ms") else "none"


def curve_table(points: Sequence[dict]) -> str:
    """One policy's curve: a row per load point."""
    return markdown_table(CURVE_HEADERS, [
        [f"{p['fraction']:.0%}", p["offered_req_per_s"], p["sent_req_per_s"],
         p["results_req_per_s"], _latency(p, "p50_ms"), _latency(p, "p99_ms"),
         _latency(p, "p99_9_ms"), p["goodput_req_per_s"], p["expired"],
         p["shed_by_scheduler"], p["mean_batch"], _cpu(p).get("total", "n/a"),
         _cpu(p).get(CORES_BUSY, "n/a")]
        for p in points])


def _times(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def ratio_table(curve: dict) -> str:
    """Every check's ratio for each policy (only the target policy's is a target), then the
    goodput the machine's CPU allows at the overload point."""
    return markdown_table(
        ["ratio", *POLICIES, f"target ({TARGET_POLICY})"],
        [[check.label, *(_times(check.measure(curve, policy)) for policy in POLICIES),
          f"{'>=' if check.at_least else '<='} {check.limit:g}x"] for check in CHECKS]
        + [[CEILING_LABEL, *(_times(goodput_ceiling(curve, p)) for p in POLICIES),
            "(a bound, not a target)"]])


CEILING_LABEL = (f"goodput ceiling at {OVERLOAD_FRACTION:.0%} (this machine's CPU) / "
                 f"{REFERENCE_POLICY} max")


def all_shed_line(curve: dict, policy: str) -> list[str]:
    """What a shed request costs and the goodput ceiling it sets, or nothing (older runs)."""
    figures = curve["policies"][policy]
    top, shed = _cpu(figures.get("max")), _cpu(figures.get("all_shed"))
    if CORES_BUSY not in top or "total" not in shed:
        return []
    p = figures["all_shed"]
    worker = shed.get("worker python threads", 0.0) + shed.get(NATIVE, 0.0)
    return ["", f"All shed ({p['offered_req_per_s']:.0f}/s offered, every request due when "
                f"sent: {p['expired']} of {p['requests']} dead-lettered `expired`, "
                f"{shed.get(CORES_BUSY, math.nan):.2f} cores busy): {shed['total']:.0f} µs of CPU "
                f"per request, all processes (worker {worker:.0f}, broker "
                f"{shed.get('broker', math.nan):.0f}, load generator "
                f"{shed.get(LOAD_GENERATOR, math.nan):.0f}), against {top['total']:.0f} µs per "
                f"request served at the sustained max ({top[CORES_BUSY]:.2f} cores busy). At "
                f"these costs, serving some of {OVERLOAD_FRACTION:.0%} offered and shedding the "
                f"rest fits in this machine's CPU only up to "
                f"{goodput_ceiling_per_s(curve, policy):.0f} results/s "
                f"({_times(goodput_ceiling(curve, policy))} the {REFERENCE_POLICY} max)."]


def section(curve: dict | None) -> list[str]:
    """The run report's lines on the curve (`###`), or why there is none."""
    out = ["", "### Latency against load (batch policies)", ""]
    if not curve:
        return out + ["The curve did not run (a results file from before it existed)."]
    reference = curve["reference_max_req_per_s"]
    out.append(
        f"Each policy on a broker, worker and topics of its own, at least once: a warm-up, a max phase "
        f"(sent at once), a sustained max (paced at that max's rate, no deadline: what the "
        f"worker answers while the producer and the broker share the machine), then each load "
        f"for {curve['seconds_per_point']:g} s, offered as a "
        f"share of the {curve['reference_policy']} policy's max ({reference:.0f} results/s), "
        f"every request due {curve['deadline_ms']} ms after it is sent. Latency: results "
        f"only, send to arrival at a consumer. Goodput: results that arrived by their "
        f"deadline, per second of sending. Shed: `expired` dead letters (by the scheduler, "
        f"unranked, or found expired at decode). CPU: all processes, per request offered; "
        f"cores busy: their CPU seconds per second of the point, sending to last answer. "
        f"Last, an all-shed phase at {OVERLOAD_FRACTION:.0%}: every request due when sent, "
        f"so each is dead-lettered unranked: what a shed request costs the machine.")
    for policy in POLICIES:
        figures = curve["policies"][policy]
        burst = figures.get("burst_max", {}).get("results_req_per_s", math.nan)
        cpu = ((figures.get("max") or {}).get("cpu_us_per_request") or {}).get("total", math.nan)
        out += ["", f"`--batch-policy {policy}`: sustained max {figures['max_req_per_s']:.0f} "
                    f"results/s ({_times(max_over_reference(curve, policy))} the "
                    f"{REFERENCE_POLICY} one; {cpu:.0f} µs of CPU per request, all processes), "
                    f"max sent at once {burst:.0f} results/s.",
                "", curve_table(figures["points"]), *all_shed_line(curve, policy)]
    out += ["", f"Ratios of each policy (the {TARGET_POLICY} policy's are targets, below):",
            "", ratio_table(curve)]
    return out
