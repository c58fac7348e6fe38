"""Pure helpers of the end-to-end benchmark (`bench/e2e.py`): latency percentiles,
sustained throughput, Prometheus histogram deltas, stage breakdowns, targets and tables.

No Kafka, no JAX here, so each helper is unit-tested on its own (tests/test_bench.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from worker.errors import WorkerError


class BenchStatsError(WorkerError, ValueError):
    """A statistic asked of data that cannot give it (e.g. a percentile of nothing)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if len(values) == 0:
        raise BenchStatsError(f"percentile {q} of an empty sample; the phase got no results")
    if not 0 <= q <= 100:
        raise BenchStatsError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, np.float64), q))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99, p99.9 and max of a latency sample, in milliseconds."""
    values = np.asarray(latencies_ms, np.float64)
    return {"count": int(values.size), "mean_ms": float(values.mean()) if values.size else math.nan,
            "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "p99_9_ms": percentile(values, 99.9),
            "max_ms": float(values.max())}


def sustained_rate(times_ms: Sequence[float], trim: float = 0.1) -> float:
    """Events per second between the `trim` and `1 - trim` quantiles of their times.

    Leaves out the ramp-up (first results while batches fill) and the tail (the last, partial
    batch), which would otherwise understate a short run. Needs at least two distinct times.
    """
    times = np.sort(np.asarray(times_ms, np.float64))
    if times.size < 2:
        raise BenchStatsError(f"a rate needs at least 2 events, got {times.size}")
    if not 0 <= trim < 0.5:
        raise BenchStatsError(f"trim must be in [0, 0.5), got {trim}")
    lo, hi = int(trim * (times.size - 1)), int(math.ceil((1 - trim) * (times.size - 1)))
    span_s = (times[hi] - times[lo]) / 1000.0
    if span_s <= 0:
        raise BenchStatsError(f"events {lo}..{hi} share one timestamp; run more events")
    return (hi - lo) / span_s


def bucket_counts(before: Mapping[float, float], after: Mapping[float, float]
                  ) -> dict[str, int]:
    """Per-range counts between two scrapes of a cumulative Prometheus histogram.

    `before`/`after` map each bucket's upper bound `le` (math.inf for +Inf) to its cumulative
    count. Returns {"1": n, "2": n, "3-4": n, ...} for integer-valued observations (batch
    sizes), leaving out empty ranges.
    """
    if set(before) != set(after):
        raise BenchStatsError(f"histogram buckets changed between scrapes: {sorted(before)} vs "
                              f"{sorted(after)}")
    out: dict[str, int] = {}
    previous_bound, previous_count = 0.0, 0.0
    for bound in sorted(after):
        count = after[bound] - before[bound]
        if count < previous_count:
            raise BenchStatsError(f"histogram deltas not cumulative at le={bound}")
        in_range = int(round(count - previous_count))
        if in_range:
            low = int(previous_bound) + 1
            if math.isinf(bound):
                label = f">{int(previous_bound)}"
            else:
                label = str(int(bound)) if low == int(bound) else f"{low}-{int(bound)}"
            out[label] = in_range
        previous_bound, previous_count = bound, count
    return out


def shares(ms_per_stage: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{stage: {"ms": x, "share": x / total}} in the given order."""
    total = sum(ms_per_stage.values())
    if total <= 0:
        raise BenchStatsError(f"stage times sum to {total} ms; nothing was measured")
    return {stage: {"ms": ms, "share": ms / total} for stage, ms in ms_per_stage.items()}


@dataclasses.dataclass(frozen=True)
class Target:
    """One benchmark target: `measured` must be >= (or <=) `limit`."""

    name: str
    measured: float
    limit: float
    at_least: bool  # True: measured >= limit passes; False: measured <= limit passes
    unit: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def describe(self) -> str:
        op = ">=" if self.at_least else "<="
        return f"{_num(self.measured)}{self.unit} (need {op} {_num(self.limit)}{self.unit})"

    def to_json(self) -> dict:
        return {"name": self.name, "measured": self.measured, "limit": self.limit,
                "op": ">=" if self.at_least else "<=", "unit": self.unit,
                "passed": self.passed}


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table, columns padded so it reads as plain text too."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise BenchStatsError(f"row {row} has {len(row)} cells, headers have {len(headers)}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return _num(value)
    return str(value)
