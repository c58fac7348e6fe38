"""Model-alone benchmark: `python -m bench.model` (or `make bench-model`).

Requests/s of the ranking step the worker serves (`rank_cached`) for the demo config (S=32, C=8) and the reference default
(S=128, C=32), at batch 1 and at larger batches, jitted vs the same step applied eagerly.
A benchmark, not a test: numbers depend on the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from phoenix.config import RankerConfig
from phoenix.params import dummy_batch
from phoenix.runner import RankingRunner

CONFIGS = {
    "demo S=32 C=8": RankerConfig(),
    "reference S=128 C=32": RankerConfig(history_seq_len=128, candidate_seq_len=32),
}


def median_seconds(fn: Callable[[], object], repeats: int, min_time: float) -> float:
    """Median wall time of one call, over `repeats` timed rounds of at least `min_time`."""
    fn()  # warm: compile / fill caches
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def filled_batch(config: RankerConfig, batch_size: int, num_candidates: int | None = None,
                 seed: int = 0):
    """A batch whose every slot is real (padding would let the model skip nothing anyway,
    but real hashes keep the gather honest): `[batch_size, S]` history, `[batch_size, C]`
    candidates (C = `num_candidates`, default the config's)."""
    rng = np.random.default_rng(seed)
    batch = dummy_batch(config, batch_size, num_candidates)
    return batch._replace(**{
        name: rng.integers(1, 64, size=np.shape(value)).astype(np.int32)
        if np.asarray(value).dtype == np.int32 and "surface" not in name else value
        for name, value in batch._asdict().items()})


def bench_config(name: str, config: RankerConfig, batch_sizes: list[int], eager: bool,
                 repeats: int, min_time: float) -> list[dict]:
    """One row per batch size: jitted ms per call and requests/s (eager too at batch 1)."""
    runner = RankingRunner.create(config, seed=0)
    rows = []
    for batch_size in batch_sizes:
        row = bench_batch(runner, batch_size, eager and batch_size == 1, repeats, min_time)
        rows.append({"config": name, **row})
        print(_format_row(rows[-1]), flush=True)
    return rows


def bench_batch(runner: RankingRunner, batch_size: int, eager: bool, repeats: int,
                min_time: float) -> dict:
    """Jitted `runner.rank_cached`, the step the worker serves (host numpy in, host numpy
    out), on a full batch of `batch_size`."""
    batch = filled_batch(runner.config, batch_size)
    jitted = median_seconds(lambda: runner.rank_cached(batch), repeats, min_time)
    row = {"batch": batch_size, "jit_ms": jitted * 1e3, "jit_req_per_s": batch_size / jitted}
    if eager:
        slow = median_seconds(lambda: runner.rank_eager(batch), max(3, repeats // 2), min_time)
        row.update(eager_ms=slow * 1e3, eager_req_per_s=batch_size / slow,
                   jit_speedup=slow / jitted)
    return row


def _format_row(row: dict) -> str:
    eager = (f"  eager {row['eager_req_per_s']:9.1f} req/s  jit/eager {row['jit_speedup']:6.1f}x"
             if "eager_ms" in row else "")
    return (f"{row['config']:<22} B={row['batch']:<4} jit {row['jit_ms']:8.3f} ms "
            f"{row['jit_req_per_s']:10.1f} req/s{eager}")


def environment() -> dict:
    return {"cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "jax_version": jax.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/model.json")
    parser.add_argument("--batches", default="1,8,32,64,128,256",
                        help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per timed round")
    parser.add_argument("--no-eager", action="store_true")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batches.split(",")]
    print(f"environment: {environment()}")
    rows = []
    for name, config in CONFIGS.items():
        rows += bench_config(name, config, batch_sizes, not args.no_eager, args.repeats,
                             args.min_time)
    best = {}
    for row in rows:
        if row["jit_req_per_s"] > best.get(row["config"], {}).get("jit_req_per_s", 0):
            best[row["config"]] = row
    for name, row in best.items():
        print(f"best batch for {name}: B={row['batch']} ({row['jit_req_per_s']:.0f} req/s)")
    result = {"environment": environment(), "rows": rows,
              "best": {k: {"batch": v["batch"], "req_per_s": v["jit_req_per_s"]}
                       for k, v in best.items()},
              "configs": {k: dataclasses.asdict(v) for k, v in CONFIGS.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
