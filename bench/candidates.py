"""Large candidate sets: the reference layout's rows vs the cached context, same run.

    python -m bench.candidates   (also part of `make bench`)

For N candidates per request, the reference layout ranks ceil(N/C) rows, each pushing the
same user and history through every layer again, in calls of at most 64 rows (the worker's
largest batch bucket); the cached path encodes user and history once and scores the N
candidates against it, one row per request. Measured per config and N:
  - throughput: a batch of K requests, K the most the worker puts in one cached call at
    that width (default settings), requests/s and candidates/s;
  - latency: one request alone (batch of 1), ms.
The multi-row figures include the step that ranked a request's rows together when N > C (its
weighted scores through the same jitted `finalize`, at the worker's width, one request per
call), as the worker ran it before the cached path.
A benchmark, not a test: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from bench.model import CONFIGS, environment, filled_batch, median_seconds
from bench.stats import markdown_table
from phoenix.model import RecsysBatch, context_cache_bytes
from phoenix.runner import RankingRunner
from phoenix.scoring import finalize
from worker.assembly import Buckets
from worker.serving import buckets_for
from worker.settings import Settings

COUNTS = (8, 64, 256, 1024)
MAX_ROWS = Settings().batch_buckets[-1]  # rows in the multi-row worker's largest call


def padded(batch: RecsysBatch, width: int) -> RecsysBatch:
    """The same requests with their candidates zero-padded to `width`: [K, N] -> [K, W]."""
    def pad(x):
        return np.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return batch._replace(**{name: pad(value) for name, value in batch._asdict().items()
                             if name.startswith("candidate_")})


def as_rows(batch: RecsysBatch, c: int) -> RecsysBatch:
    """The reference layout: each request's [N] candidates as ceil(N / C) rows of C, every
    row repeating the request's user and history. [K, W] -> [K * ceil(W / C), C]."""
    k, n = batch.candidate_post_hashes.shape[:2]
    rows = -(-n // c)

    def candidates(x):  # [K, N, ...] -> [K * rows, C, ...], zero-padded
        padded = np.zeros((k, rows * c) + x.shape[2:], x.dtype)
        padded[:, :n] = x
        return padded.reshape((k * rows, c) + x.shape[2:])

    fields = batch._asdict()
    return RecsysBatch(**{name: candidates(v) if name.startswith("candidate_")
                          else np.repeat(v, rows, axis=0) for name, v in fields.items()})


def _row_calls(rows: RecsysBatch) -> list[RecsysBatch]:
    """Rows cut into calls of at most MAX_ROWS, each padded to a power of two (the worker's
    buckets), as the multi-row worker ran them."""
    total = rows.user_hashes.shape[0]
    calls = []
    for start in range(0, total, MAX_ROWS):
        end = min(start + MAX_ROWS, total)
        size = 1 << (end - start - 1).bit_length()
        calls.append(RecsysBatch(*[np.concatenate([x[start:end], np.zeros(
            (size - (end - start),) + x.shape[1:], x.dtype)]) for x in rows]))
    return calls


def worker_buckets(runner: RankingRunner) -> Buckets:
    """The buckets a worker with default settings compiles for this model."""
    return buckets_for(Settings(), runner)


def _multi_row(runner: RankingRunner, batch: RecsysBatch):
    """The reference layout's path for `batch` [K, N]: row calls, then (N > C) each
    request's candidates ranked together by `finalize` at the padded width."""
    c = runner.config.candidate_seq_len
    k, n = batch.candidate_post_hashes.shape[:2]
    calls = _row_calls(as_rows(batch, c))
    merge = jax.jit(finalize)
    width = worker_buckets(runner).width(n)
    authors = np.zeros((k, 1, width) + batch.candidate_author_hashes.shape[2:], np.int32)
    authors[:, 0, :n] = batch.candidate_author_hashes  # [K, 1, W, na]
    valid = np.arange(width)[None, :] < n  # [1, W]

    def run() -> None:
        outputs = [runner.rank(call) for call in calls]
        if n <= c:
            return
        rows = -(-n // c)
        raw = np.concatenate([o.raw_scores for o in outputs])[:k * rows]  # [K * rows, C]
        raw = raw.reshape(k, rows * c)  # [K, rows * C]: padding slots score 0, masked below
        padded = np.zeros((k, 1, width), np.float32)
        padded[:, 0, :rows * c] = raw[:, :width]
        for i in range(k):
            jax.device_get(merge(padded[i], authors[i], valid, runner.state.diversity))
    return run


def measure(runner: RankingRunner, n: int, repeats: int, min_time: float) -> dict:
    config = runner.config
    c = config.candidate_seq_len
    buckets = worker_buckets(runner)
    k = buckets.batch_sizes_for(buckets.width(n))[-1]
    out = {"N": n, "requests_per_batch": k}
    for label, requests in (("batch", k), ("alone", 1)):
        batch = filled_batch(config, requests, n, seed=n)
        cached = padded(batch, buckets.width(n))
        multi_row = _multi_row(runner, batch)
        multi_s = median_seconds(multi_row, repeats, min_time)
        cached_s = median_seconds(lambda: runner.rank_cached(cached), repeats, min_time)
        out[label] = {"multi_row_ms": multi_s * 1e3, "cached_ms": cached_s * 1e3,
                      "multi_row_calls": len(_row_calls(as_rows(batch, c)))}
    b = out["batch"]
    out.update(
        multi_row_req_per_s=k / (b["multi_row_ms"] / 1e3),
        cached_req_per_s=k / (b["cached_ms"] / 1e3),
        multi_row_cand_per_s=k * n / (b["multi_row_ms"] / 1e3),
        cached_cand_per_s=k * n / (b["cached_ms"] / 1e3),
        throughput_ratio=b["multi_row_ms"] / b["cached_ms"],
        latency_ratio=out["alone"]["cached_ms"] / out["alone"]["multi_row_ms"])
    return out


def run(repeats: int = 3, min_time: float = 0.2, counts=COUNTS) -> list[dict]:
    rows = []
    for name, config in CONFIGS.items():
        runner = RankingRunner.create(config, seed=0)
        for n in counts:
            row = {"config": name, "cache_bytes_per_request": context_cache_bytes(config),
                   **measure(runner, n, repeats, min_time)}
            rows.append(row)
            print(f"{name:<22} N={n:<5} K={row['requests_per_batch']:<3} multi-row "
                  f"{row['multi_row_cand_per_s']:9.0f} cand/s, cached "
                  f"{row['cached_cand_per_s']:9.0f} cand/s ({row['throughput_ratio']:.2f}x); "
                  f"alone {row['alone']['multi_row_ms']:.1f} -> {row['alone']['cached_ms']:.1f}"
                  f" ms", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["config", "N", "K", "multi-row req/s", "cached req/s", "multi-row cand/s",
         "cached cand/s", "cand/s ratio", "alone multi-row ms", "alone cached ms",
         "alone latency ratio"],
        [[r["config"], r["N"], r["requests_per_batch"], r["multi_row_req_per_s"],
          r["cached_req_per_s"], r["multi_row_cand_per_s"], r["cached_cand_per_s"],
          f"{r['throughput_ratio']:.2f}x", r["alone"]["multi_row_ms"], r["alone"]["cached_ms"],
          f"{r['latency_ratio']:.2f}"] for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/candidates.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args(argv)
    rows = run(args.repeats, args.min_time)
    print("\n" + table(rows))
    Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
