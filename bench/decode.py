"""Decode + validate micro-benchmark: `python -m bench.decode` (or `make bench-decode`).

Median microseconds per call on one demo-size request (the first world request of the
producer's stream with a full history: S=32 history items, C=8 candidates), for:

- `msgpack.unpackb` alone (the yardstick: decoding only, nothing checked);
- the error path: `codec.decode_request_bytes` + `first_error` (what naming a refused
  request's error costs; the demo request breaks no rule, so the walk goes all the way);
- `check_typed`: decode + validate on the typed path (every rule of the contract checked;
  the request is not yet arrays);
- `parse_request`: one request decoded, validated and turned into its numpy arrays;
- `parse_requests`, per request of a batch of 64: what the worker's decode thread calls (the
  arrays of a whole batch are built at once);
- the history table's host cost for a ranking-request.v2 without history: the table lookup
  and `with_table_history` filling the request from the user's stored value (the same
  history the demo request carries, as engagements);
- and, for the result side, `build_result` + `encode_result` of an answer to that request.

The functions are timed in interleaved rounds so that a busy machine slows them alike; compare
the ratios, not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import msgpack
import numpy as np

from phoenix.actions import NUM_ACTIONS
from tools.producer import generate_events
from training.world import WorldConfig
from worker import codec, history
from worker.wire import ENGAGEMENT_SCHEMA, REQUEST_SCHEMA_V2, REQUEST_SCHEMAS
from worker.engagement import encode_engagement, parse_engagement
from worker.request import RankingRequest
from worker.validation import (DEFAULT_LIMITS, check_typed, first_error, parse_request,
                               parse_requests)

BATCH = 64  # the worker's default max batch


def demo_request(seed: int = 7) -> bytes:
    """The first world request with a full history, encoded as a producer sends it."""
    full = WorldConfig().history_len
    event = next(e for e in generate_events(seed, 10_000)
                 if len(e.request["history"]) == full)
    return event.encode(1_700_000_000_000)


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    # CPU time of this thread: on a shared machine, time spent descheduled is not ours.
    start = time.thread_time()
    for _ in range(number):
        fn()
    return (time.thread_time() - start) / number * 1e6


def median_us(fns: dict[str, Callable[[], object]], rounds: int, number: int
              ) -> dict[str, float]:
    """Median microseconds per call of each function over `rounds` interleaved rounds."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm caches (and the decoder cache per limits)
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_per_call_us(fn, number))
    return {name: statistics.median(values) for name, values in samples.items()}


def _encode_answer(data: bytes) -> Callable[[], bytes]:
    request = parse_request(data)
    c = request.num_candidates
    rng = np.random.default_rng(0)
    order = np.argsort(-rng.random(c))  # [c]
    scores = rng.random(c).astype(np.float32)  # [c]
    probabilities = rng.random((c, NUM_ACTIONS)).astype(np.float32)  # [c, A]
    return lambda: codec.encode_result(codec.build_result(
        request, order, scores, probabilities, model_version="bench", worker_id="w-bench",
        timings={"queue_wait_ms": 1.25, "model_ms": 3.5}, produced_at_ms=1_700_000_000_000))


def _table_fill(data: bytes) -> Callable[[], RankingRequest]:
    """Lookup + fill of the v2 form of `data` from a table holding its history."""
    raw = msgpack.unpackb(data)
    table: history.HistoryTable = {}
    for t, item in enumerate(raw.pop("history"), start=1):
        history.apply(table, parse_engagement(encode_engagement(
            {"schema": ENGAGEMENT_SCHEMA, "user_id": raw["user_id"], "timestamp_ms": t, **item}),
            DEFAULT_LIMITS), DEFAULT_LIMITS.max_history)
    bare = parse_request(codec.encode_request({**raw, "schema": REQUEST_SCHEMA_V2}),
                         DEFAULT_LIMITS, REQUEST_SCHEMAS)
    lookup, keep = history.lookup(table), DEFAULT_LIMITS.history_keep
    return lambda: history.with_table_history(bare, lookup(bare.user_id), keep)


def measure(data: bytes, rounds: int = 31, number: int = 200) -> dict[str, float]:
    """Median us per call of each way to read `data` (and to answer it), interleaved; the
    batch figure is divided by the batch size."""
    limits = DEFAULT_LIMITS
    batch = [data] * BATCH
    times = median_us({
        "msgpack.unpackb alone": lambda: msgpack.unpackb(data),
        "untyped decode + validate": lambda: first_error(
            codec.decode_request_bytes(data, limits), limits),
        "check_typed (decode + validate)": lambda: check_typed(data, limits),
        "parse_request": lambda: parse_request(data, limits),
        f"parse_requests, per request of {BATCH}": lambda: parse_requests(batch, limits),
        "table lookup + fill (v2, no history)": _table_fill(data),
        "build_result + encode_result": _encode_answer(data),
    }, rounds, number)
    times[f"parse_requests, per request of {BATCH}"] /= BATCH
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds (median)")
    parser.add_argument("--number", type=int, default=200, help="calls per function a round")
    args = parser.parse_args(argv)
    data = demo_request()
    if check_typed(data, DEFAULT_LIMITS) is None:
        raise SystemExit("the demo request does not take the typed path: a bug")
    shape = msgpack.unpackb(data)
    print(f"demo request: {len(data)} bytes, {len(shape['history'])} history items, "
          f"{len(shape['candidates'])} candidates; median of {args.rounds} rounds x "
          f"{args.number} calls")
    times = measure(data, args.rounds, args.number)
    base = times["msgpack.unpackb alone"]
    for name, us in times.items():
        print(f"  {name:30s} {us:8.1f} us  {us / base:5.2f}x unpackb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
