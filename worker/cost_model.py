"""How long a batch will take to rank: the scheduler's cost model.

The model is compiled for a fixed set of call shapes (`Buckets.shapes`); each shape's run time
is measured once at start (right after it compiles) and kept fresh from the batches served.
A batch's predicted time is the sum of its calls' times plus a per-request host cost
(assembling, mapping back, encoding), learnt from the same batches. Knows the buckets, never
Kafka; the scheduler sees only the opaque `width` of each request.
"""

from __future__ import annotations

import bisect
import dataclasses
import statistics
import time
from typing import Callable, Iterable, Mapping, NamedTuple

from worker.assembly import Buckets

Shape = tuple[int, int]  # (requests, width) of one jitted call

# Weight of the newest batch in the running estimates: about the last 10 batches count.
SMOOTHING = 0.1
# The most one batch can move a shape's estimate: a factor of 1 + SMOOTHING * (MAX_STEP - 1).
MAX_STEP = 2.0
# Host ms per request before any batch was served (assembly + encoding of a demo request on
# the 2-core build machine is ~0.03 ms; the first batches correct it).
INITIAL_HOST_MS = 0.05


class Prediction(NamedTuple):
    """A batch's predicted time and the calls it predicts it for."""

    ms: float  # the whole `process` step: model calls + host work
    model_ms: float
    shapes: tuple[Shape, ...]
    requests: int


@dataclasses.dataclass
class CostModel:
    """Predicted ms for a batch of requests, by their widths (`width`)."""

    buckets: Buckets
    shape_ms: dict[Shape, float]  # measured model time of each compiled shape
    host_ms_per_request: float = INITIAL_HOST_MS
    # From a batch's run to its answers being out (the wait for the batch ahead to be
    # published, then its own publishing): added to every predicted finish.
    after_ms: float = 0.0

    @classmethod
    def measure(cls, buckets: Buckets, run: Callable[[Shape], None],
                repeats: int = 3) -> "CostModel":
        """Times `run(shape)` (one model call of that shape, already compiled) for every
        shape: the median of `repeats` runs."""
        shape_ms = {}
        for shape in buckets.shapes():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(shape)
                times.append((time.perf_counter() - start) * 1000.0)
            shape_ms[shape] = statistics.median(times)
        return cls(buckets, shape_ms)

    def width(self, num_candidates: int) -> int:
        """The cost class of a request: its padded width."""
        widths = self.buckets.widths
        return widths[min(bisect.bisect_left(widths, num_candidates), len(widths) - 1)]

    def width_ms(self, width: int, count: int) -> float:
        """Model ms for `count` requests of `width` (their calls)."""
        return sum(self.shape_ms[shape] for shape in self.buckets.call_shapes(width, count))

    def batch_ms(self, counts: Mapping[int, int]) -> float:
        """Predicted ms of a batch holding `counts[width]` requests of each width."""
        return sum(self.width_ms(w, n) + n * self.host_ms_per_request
                   for w, n in counts.items() if n)

    def uniform_ms(self, width: int, count: int) -> float:
        """Predicted ms of a batch of `count` requests, all of `width`."""
        return self.width_ms(width, count) + count * self.host_ms_per_request

    def largest_within(self, width: int, budget_ms: float, most: int) -> int:
        """The most requests of `width` (1..`most`) whose batch is predicted within
        `budget_ms`; at least 1 (a lone request is always served)."""
        low, high = 1, most
        while low < high:  # the cost grows with the count: binary search
            middle = (low + high + 1) // 2
            if self.uniform_ms(width, middle) <= budget_ms:
                low = middle
            else:
                high = middle - 1
        return low

    def predict(self, widths: Iterable[int]) -> Prediction:
        """The prediction for a batch of requests of these widths."""
        counts: dict[int, int] = {}
        for width in widths:
            counts[width] = counts.get(width, 0) + 1
        shapes = tuple(s for w, n in counts.items() for s in self.buckets.call_shapes(w, n))
        model_ms = sum(self.shape_ms[s] for s in shapes)
        requests = sum(counts.values())
        return Prediction(model_ms + requests * self.host_ms_per_request, model_ms, shapes,
                          requests)

    def observe(self, prediction: Prediction, model_ms: float, host_ms: float) -> None:
        """Folds in a served batch: each of its shapes moves towards its share of the measured
        model time (shares as predicted), the host cost towards the measured per request."""
        if prediction.model_ms > 0 and model_ms > 0:
            # Clipped: one stalled batch (a pause of the whole process) moves the estimates
            # by a tenth at most, not by the stall.
            ratio = min(max(model_ms / prediction.model_ms, 1 / MAX_STEP), MAX_STEP)
            for shape in set(prediction.shapes):
                old = self.shape_ms[shape]
                self.shape_ms[shape] = old + SMOOTHING * (old * ratio - old)
        if prediction.requests:
            per_request = max(0.0, host_ms) / prediction.requests
            self.host_ms_per_request += SMOOTHING * (per_request - self.host_ms_per_request)

    def observe_after(self, after_ms: float, most_ms: float) -> None:
        """Folds in how long after its run's predicted end a batch's answers were out, each
        observation counted up to `most_ms`: one publishing stall must not make the
        predicted finishes shed everything."""
        after_ms = min(max(0.0, after_ms), most_ms)
        self.after_ms += SMOOTHING * (after_ms - self.after_ms)
