"""In-process measurements of the worker's batch path (`bench/e2e.py`), no Kafka.

- `assembly_ratio`: assembling n validated requests into padded tensors vs ranking them with
  the jitted model (assembly should stay under 10% of model time);
- `profile_batch_path`: one batch of B records through the same pipeline the worker runs,
  split into decode and validate (one typed step, as the worker does it), assemble,
  host-to-device, model, device-to-host, map back and encode (the Kafka stages, consume and publish/ack, come from the worker's own metrics).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, Sequence

import jax

from bench.model import median_seconds
from phoenix.model import build_prefix_model
from phoenix.runner import RankingRunner, RankOutput, rank_cached_step
from worker.pipeline import InputRecord, RankingPipeline
from tools.producer import generate_events
from worker.request import RankingRequest
from worker.validation import parse_request, parse_requests


def demo_records(seed: int, count: int, topic: str = "bench") -> list[InputRecord]:
    """`count` valid world requests as consumed records, stamped now."""
    now = int(time.time() * 1000)
    return [InputRecord(e.encode(now), e.key, topic, 0, i, now)
            for i, e in enumerate(generate_events(seed, count))]


def _parse_all(pipeline: RankingPipeline, records: Sequence[InputRecord]
               ) -> list[RankingRequest]:
    return [parse_request(r.value, pipeline.limits) for r in records]


def assembly_ratio(pipeline: RankingPipeline, records: Sequence[InputRecord],
                   repeats: int = 5, min_time: float = 0.2) -> dict:
    """Median ms to assemble all `records`' requests vs to rank the resulting model calls."""
    requests = _parse_all(pipeline, records)
    assembler, runner = pipeline.assembler, pipeline.runner
    assembly = assembler.assemble(requests)
    assemble_s = median_seconds(lambda: assembler.assemble(requests), repeats, min_time)
    model_s = median_seconds(lambda: [runner.rank_cached(c.batch) for c in assembly.calls],
                             repeats, min_time)
    return {"requests": len(requests), "model_calls": len(assembly.calls),
            "call_rows": [int(c.batch.user_hashes.shape[0]) for c in assembly.calls],
            "assemble_ms": assemble_s * 1e3, "model_ms": model_s * 1e3,
            "ratio": assemble_s / model_s}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1e3


def profile_batch_path(pipeline: RankingPipeline, records: Sequence[InputRecord],
                       batch_size: int, rounds: int = 20) -> dict:
    """Median ms per batch of `batch_size` records in each stage of the worker's batch path.

    The model stage is split with an explicitly jitted copy of the runner's step (same
    function, same state), so host-to-device, compute and device-to-host are timed apart.
    """
    runner: RankingRunner = pipeline.runner
    step = jax.jit(functools.partial(rank_cached_step,
                                     build_prefix_model(runner.config, runner.dtype)))
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    batches = [b for b in batches if len(b) == batch_size]
    samples: dict[str, list[float]] = {}

    def add(stage: str, ms: float) -> None:
        samples.setdefault(stage, []).append(ms)

    for i in range(rounds + 1):  # round 0 compiles and warms caches, not counted
        batch = batches[i % len(batches)]
        whole, whole_ms = _timed(lambda: pipeline.process(pipeline.decode(batch)))
        requests, decode_ms = _timed(lambda: parse_requests([r.value for r in batch],
                                                            pipeline.limits))
        assembly, assemble_ms = _timed(lambda: pipeline.assembler.assemble(requests))
        on_device, h2d_ms = _timed(lambda: jax.block_until_ready(
            [jax.device_put(c.batch) for c in assembly.calls]))
        outputs, model_ms = _timed(lambda: jax.block_until_ready(
            [step(runner.state, b) for b in on_device]))
        host, d2h_ms = _timed(lambda: [RankOutput(*jax.device_get(o)) for o in outputs])
        _, map_ms = _timed(lambda: pipeline.assembler.rankings(requests, assembly, host))
        if i == 0:
            continue
        add("decode + validate (typed)", decode_ms)
        add("assemble", assemble_ms)
        add("host-to-device", h2d_ms)
        add("model (jitted)", model_ms)
        add("device-to-host", d2h_ms)
        add("map back to requests", map_ms)
        add("encode results", whole.times.encode_ms)
        add("pipeline.process total", whole_ms)
    medians = {stage: statistics.median(values) for stage, values in samples.items()}
    return {"batch_size": batch_size, "rounds": rounds, "median_ms": medians}
