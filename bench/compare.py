"""Both brokers side by side: how `bench/results.md` is put together.

Each `make bench BROKER=<kind>` writes its whole run to `bench/results-<kind>.json`; the report
is then rebuilt from every broker's latest file, so a run on one broker keeps the other
broker's column exactly as that broker's own run left it. A broker never run shows "not run".
Quick runs (`--quick`) keep to their own files (`results-<kind>-quick.json`), so their figures
never stand in a full run's column.

Pure: results dicts in, markdown out (tests/test_bench.py builds them by hand).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench import curve
from bench.floors import process_us
from bench.load import NATIVE
from bench.stats import markdown_table
from tools.broker.kinds import BROKER_KINDS

NOT_RUN = "not run"
MISSING = "n/a"  # the run happened but did not measure this (e.g. an older results file)
# A column's heading for a broker that has not run (a run names itself, version included).
DEFAULT_TITLES = {"embedded": "embedded broker (tansu)", "kafka": "Apache Kafka"}

Metric = Callable[[dict], "float | str | None"]  # one run's results -> one cell


def results_path(directory: Path | str, kind: str, quick: bool = False) -> Path:
    return Path(directory) / f"results-{kind}{'-quick' if quick else ''}.json"


def load_runs(directory: Path | str, quick: bool = False) -> dict[str, dict | None]:
    """Each broker's latest results from `directory` (None: never run there)."""
    runs: dict[str, dict | None] = {}
    for kind in BROKER_KINDS:
        path = results_path(directory, kind, quick)
        runs[kind] = json.loads(path.read_text()) if path.exists() else None
    return runs


# ----------------------------------------------------------------------------- metrics


def _phase(results: dict, name: str) -> dict | None:
    phases = results.get("end_to_end", {}).get("phases", [])
    return next((p for p in phases if p["phase"] == name), None)


def dig(value: object, keys: Sequence[str]) -> object:
    """value[k1][k2]..., None where a level is missing."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def phase_value(name: str, *keys: str) -> Metric:
    """A figure of one load phase, e.g. phase_value("light", "latency_ms", "p99_ms")."""
    return lambda results: dig(_phase(results, name), keys)


def _curve_policy(results: dict, policy: str) -> dict | None:
    load_curve = results.get("end_to_end", {}).get("curve")
    return load_curve["policies"].get(policy) if load_curve else None


def curve_value(policy: str, fraction: float, *keys: str) -> Metric:
    """A figure of one batch policy's curve point at `fraction` of the fixed max, e.g.
    curve_value("deadline", 0.5, "latency_ms", "p99_ms")."""
    def metric(results: dict) -> float | None:
        figures = _curve_policy(results, policy)
        return dig(curve.point(figures["points"], fraction), keys) if figures else None
    return metric


def curve_ceiling(policy: str) -> Metric:
    """`curve.goodput_ceiling_per_s` of one policy; None where the run did not measure it."""
    def metric(results: dict) -> float | None:
        run = results.get("end_to_end", {}).get("curve")
        if not _curve_policy(results, policy):
            return None
        ceiling = curve.goodput_ceiling_per_s(run, policy)
        return None if math.isnan(ceiling) else ceiling
    return metric


def curve_max(policy: str) -> Metric:
    return lambda results: (_curve_policy(results, policy) or {}).get("max_req_per_s")


def model_alone(results: dict) -> float | None:
    """Model-alone requests/s at the worker's max batch, mean of right before and after the
    max phase (the throughput target's reference)."""
    around = results.get("end_to_end", {}).get("model_alone_around_max_req_per_s")
    return statistics.mean(around) if around else None


def _ratio(numerator: float | None, denominator: float | None) -> str | None:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else None


def max_over_model(results: dict) -> str | None:
    return _ratio(phase_value("max", "results_req_per_s")(results), model_alone(results))


# The worker's processing guarantees (`--processing-guarantee`): every phase runs at least
# once; where the broker has transactions, max and half max run again exactly once.
AT_LEAST_ONCE, EXACTLY_ONCE = "at_least_once", "exactly_once"
GUARANTEES = (AT_LEAST_ONCE, EXACTLY_ONCE)
# What the guarantees are compared on: (label, phase, keys into that phase's figures).
GUARANTEE_FIGURES = (("max results/s", "max", ("results_req_per_s",)),
                     ("p50 ms at half max", "half max", ("latency_ms", "p50_ms")),
                     ("p99 ms at half max", "half max", ("latency_ms", "p99_ms")))


def guarantee_phase(guarantee: str, phase: str) -> str:
    """A phase's name in the results; at least once keeps the plain names ("max")."""
    return phase if guarantee == AT_LEAST_ONCE else f"{guarantee} {phase}"


def guarantee_value(guarantee: str, phase: str, *keys: str) -> Metric:
    return phase_value(guarantee_phase(guarantee, phase), *keys)


def exactly_once_over_at_least_once(results: dict) -> str | None:
    """Max results/s exactly once over at least once, same run: the throughput cost."""
    return _ratio(*(guarantee_value(g, "max", "results_req_per_s")(results)
                    for g in (EXACTLY_ONCE, AT_LEAST_ONCE)))


def _floor(results: dict, label: str) -> dict | None:
    floors = results.get("end_to_end", {}).get("floors") or []
    return next((f for f in floors if f["floor"].startswith(label)), None)


def floor_rate(label: str) -> Metric:
    return lambda results: (_floor(results, label) or {}).get("msgs_per_s")


def floor_process_cpu(label: str) -> Metric:
    def metric(results: dict) -> float | None:
        row = _floor(results, label)
        return process_us(row) if row and row.get("cpu_us") else None
    return metric


def floor_broker_cpu(label: str) -> Metric:
    return lambda results: ((_floor(results, label) or {}).get("cpu_us") or {}).get("broker")


def max_cpu(key: str) -> Metric:
    """CPU microseconds per request under max load of one process (or "total")."""
    def metric(results: dict) -> float | None:
        cpu = phase_value("max", "cpu_us_per_request")(results)
        return cpu.get(key) if cpu else None
    return metric


def worker_cpu(results: dict) -> float | None:
    cpu = phase_value("max", "cpu_us_per_request")(results)
    return cpu["worker python threads"] + cpu.get(NATIVE, 0.0) if cpu else None


FLOORS = (("(a)", "plain aiokafka echo"), ("(b)", "Faust pass-through"),
          ("(c)", "host ceiling (worker, model precomputed)"))

# One table per phase: (heading, sentence under it, rows of (label, metric)).
TABLES: tuple[tuple[str, str, tuple[tuple[str, Metric], ...]], ...] = (
    ("Light load", "A fixed light rate: latency with nothing queued.", (
        ("offered requests/s", phase_value("light", "offered_req_per_s")),
        ("results/s", phase_value("light", "results_req_per_s")),
        ("p50 ms", phase_value("light", "latency_ms", "p50_ms")),
        ("p99 ms", phase_value("light", "latency_ms", "p99_ms")),
    )),
    ("Half of max", "Half the throughput that broker's own max phase reached.", (
        ("offered requests/s", phase_value("half max", "offered_req_per_s")),
        ("results/s", phase_value("half max", "results_req_per_s")),
        ("p50 ms", phase_value("half max", "latency_ms", "p50_ms")),
        ("p99 ms", phase_value("half max", "latency_ms", "p99_ms")),
    )),
    ("Max", "As fast as possible, against the model alone measured around that phase.", (
        ("results/s", phase_value("max", "results_req_per_s")),
        ("model alone at the max batch, requests/s", model_alone),
        ("e2e max / model alone", max_over_model),
    )),
    ("Processing guarantees", "Max and half max at least once (the phases above) and again "
     "exactly once, on a worker of its own whose results are read `read_committed`, as a "
     "downstream consumer reads them; each half max is half that guarantee's own max. The "
     f"embedded broker has no transactions: its exactly-once cells read {MISSING}.", (
        *((f"{g}: {label}", guarantee_value(g, phase, *keys))
          for label, phase, keys in GUARANTEE_FIGURES for g in GUARANTEES),
        (f"max results/s, {EXACTLY_ONCE} / {AT_LEAST_ONCE}", exactly_once_over_at_least_once),
    )),
    ("CPU per request at max load", "Microseconds of CPU per request, by process.", (
        ("worker, all threads", worker_cpu),
        ("worker, Python threads", max_cpu("worker python threads")),
        ("broker (its whole process)", max_cpu("broker")),
        ("bench producer + consumer", max_cpu("bench producer + consumer")),
        ("total", max_cpu("total")),
        ("cores busy", max_cpu("cores busy")),
    )),
    ("Host floors (no model)", "The same requests through each floor as fast as possible; "
     "CPU us per message.", tuple(
        row for label, name in FLOORS for row in (
            (f"{label} {name}: messages/s", floor_rate(label)),
            (f"{label} CPU us/msg, floor process", floor_process_cpu(label)),
            (f"{label} CPU us/msg, broker", floor_broker_cpu(label)),
        ))),
)


# ----------------------------------------------------------------------------- markdown


def column_title(kind: str, results: dict | None) -> str:
    if results is None:
        return DEFAULT_TITLES.get(kind, kind)
    title = results.get("broker", {}).get("title", DEFAULT_TITLES.get(kind, kind))
    return f"{title}, quick run" if results.get("quick") else title


def cell(results: dict | None, metric: Metric) -> float | str:
    if results is None:
        return NOT_RUN
    try:
        value = metric(results)
    except (KeyError, TypeError, ZeroDivisionError):
        value = None
    return MISSING if value is None else value


def phase_table(runs: Mapping[str, dict | None],
                rows: Sequence[tuple[str, Metric]]) -> str:
    kinds = list(runs)
    return markdown_table([""] + [column_title(k, runs[k]) for k in kinds],
                          [[label] + [cell(runs[k], metric) for k in kinds]
                           for label, metric in rows])


def when(results: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(results["started"]))


def run_line(kind: str, results: dict | None) -> str:
    """The date, machine and conditions of one broker's run."""
    if results is None:
        return f"- {column_title(kind, None)}: {NOT_RUN} (`make bench BROKER={kind}`)."
    env = results["environment"]
    targets = results.get("targets", [])
    return (f"- {column_title(kind, results)}: {when(results)}, {env['cpu_count']} CPUs "
            f"({env['machine']}), JAX {env['jax_version']} on {env['jax_backend']}, Python "
            f"{env['python']}; load average {env['load_average_at_start'][0]:.2f} at start, "
            f"{results['duration_s']:.0f} s; consumer fetch wait "
            f"{results['settings']['fetch_max_wait_ms']} ms; "
            f"{sum(t['passed'] for t in targets)} of {len(targets)} targets met.")


# The latency-vs-load curve across brokers: each figure of one policy beside the other's.
CURVE_ROWS: tuple[tuple[str, Metric], ...] = (
    *((f"{policy}: max results/s", curve_max(policy)) for policy in curve.POLICIES),
    *((f"{policy}: p99 ms at {f:.0%}", curve_value(policy, f, "latency_ms", "p99_ms"))
      for f in curve.LOAD_FRACTIONS for policy in curve.POLICIES),
    *((f"{policy}: goodput/s at {f:.0%}", curve_value(policy, f, "goodput_req_per_s"))
      for f in (1.0, curve.OVERLOAD_FRACTION) for policy in curve.POLICIES),
    *((f"{policy}: the CPU's goodput ceiling/s at {curve.OVERLOAD_FRACTION:.0%}",
       curve_ceiling(policy)) for policy in curve.POLICIES),
)


def curve_comparison(runs: Mapping[str, dict | None], figure: str | None = None) -> str:
    """Both batch policies' curves, a column per broker, then the plot (`figure`, a link
    relative to the report) where there is one."""
    out = ["## Latency against load", "",
           f"Each batch policy on a worker of its own, offered a share of that run's "
           f"{curve.REFERENCE_POLICY} max, every request due {curve.CURVE_DEADLINE_MS} ms after "
           f"it is sent: p99 of the results, goodput (results by their deadline, per second).",
           "", phase_table(runs, CURVE_ROWS)]
    if figure:
        out += ["", f"![p99 and goodput against offered load, each batch policy and broker]"
                    f"({figure})"]
    return "\n".join(out)


def comparison(runs: Mapping[str, dict | None]) -> str:
    """The run lines, then one table per phase with a column per broker."""
    out = [run_line(kind, results) for kind, results in runs.items()]
    for heading, sentence, rows in TABLES:
        out += ["", f"## {heading}", "", sentence, "", phase_table(runs, rows)]
    return "\n".join(out)


def document(runs: Mapping[str, dict | None], detail: Callable[[dict], str],
             figure: str | None = None) -> str:
    """bench/results.md: the comparison, the latency-vs-load curve (with the plot `figure`
    links), then each broker's run in detail (`detail` renders one run's report with `###`
    sections)."""
    out = ["# Benchmark: the embedded broker and Apache Kafka", "",
           "Each column comes from that broker's latest `make bench BROKER=<kind>` "
           "(`bench/results-<kind>.json`); a run on one broker leaves the other's column as "
           "its own run left it. Both columns run the same bench with the same worker; only "
           "the broker and the consumers' fetch wait (what suits each broker) differ. Ratios "
           "hold within one run; across columns, mind each run's date and load:", "",
           comparison(runs), "", curve_comparison(runs, figure)]
    for kind, results in runs.items():
        if results is not None:
            name = column_title(kind, results)
            out += ["", f"## {name[:1].upper()}{name[1:]}: the run of {when(results)} in "
                        "detail", "", detail(results).rstrip("\n")]
    return "\n".join(out) + "\n"
