"""The model side of the worker, built from settings: JAX setup, runner, pipeline.

Shared by the live worker and the replay tool, so both rank with the same code and knobs.
"""

from __future__ import annotations

import logging
import os

import jax

from phoenix.checkpoint import CheckpointError
from phoenix.runner import RankingRunner
from phoenix.model import context_cache_bytes
from worker.assembly import MIB, Buckets, widths_for
from worker.pipeline import HistoryLookup, RankingPipeline
from worker.rollout import CHECKPOINT_SUFFIX, Canary, newest_checkpoint
from worker.settings import Settings, SettingsError

log = logging.getLogger(__name__)

RANDOM_CHECKPOINT = "random"  # the `checkpoint` value that asks for a fresh seed-0 model


def configure_jax(settings: Settings) -> str:
    """Pins the device and turns on the persistent compilation cache. Call before any JAX
    computation. Returns the backend in use."""
    if settings.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    if settings.jax_cache_dir:
        os.makedirs(settings.jax_cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(settings.jax_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    backend = jax.default_backend()
    if settings.device == "gpu" and backend != "gpu":
        raise SettingsError(
            f"device=gpu but JAX found only {backend!r} devices ({jax.devices()}); install the "
            "CUDA build of jaxlib (see README, GPU) or set RANKER_DEVICE=auto")
    return backend


def load_runner(checkpoint: str) -> RankingRunner:
    """The model of a checkpoint file or the newest in a directory of versions; `random` is
    a fresh seed-0 model (no training)."""
    if checkpoint == RANDOM_CHECKPOINT:
        return RankingRunner.create(seed=0)
    path = newest_checkpoint(checkpoint)
    if path is None and os.path.isdir(checkpoint):
        raise CheckpointError(f"{checkpoint}: no *{CHECKPOINT_SUFFIX} checkpoint in this "
                              "directory")
    return RankingRunner.from_checkpoint(path or checkpoint)


def buckets_for(settings: Settings, runner: RankingRunner) -> Buckets:
    """Requests of one width take calls of up to the largest batch bucket, and a call holds
    at most as many candidate slots as the reference layout's largest call had tokens
    (rows x (1+S+C)): a call costs about the same whatever its width."""
    config = runner.config
    widths = settings.candidate_buckets or widths_for(config.candidate_seq_len,
                                                      settings.max_candidates)
    return Buckets(batch_sizes=settings.batch_buckets, widths=widths,
                   call_candidates=settings.batch_buckets[-1] * config.seq_len,
                   full_widths=config.candidate_seq_len)


def _canary_runner(checkpoint: str, main: RankingRunner) -> RankingRunner:
    try:
        canary = load_runner(checkpoint)
    except CheckpointError as error:
        raise SettingsError(f"RANKER_CANARY_CHECKPOINT / --canary-checkpoint: cannot load "
                            f"{error}") from None
    if canary.config != main.config:
        raise SettingsError(f"RANKER_CANARY_CHECKPOINT / --canary-checkpoint: {checkpoint} has "
                            "another model config than the main checkpoint; a canary must be "
                            "the same model, retrained (it shares the compiled shapes)")
    return canary


def build_pipeline(settings: Settings, checkpoint: str | None = None,
                   worker_id: str | None = None, apply_max_age: bool = True,
                   history: HistoryLookup | None = None) -> RankingPipeline:
    """The pipeline for `checkpoint` (default: the settings' one) with the worker's buckets
    and input caps, and the settings' canary model if one is set: the one way the worker and
    the replay tool build theirs. `history`: where v2 requests without history read the
    user's stored one (None: an empty history)."""
    runner = load_runner(checkpoint or settings.checkpoint)
    canary = (Canary(_canary_runner(settings.canary_checkpoint, runner), settings.canary_share)
              if settings.canary_checkpoint else None)
    return RankingPipeline.create(
        runner, buckets_for(settings, runner), worker_id or settings.resolved_worker_id,
        max_age_ms=(settings.max_age_ms or None) if apply_max_age else None,
        cache_budget_mb=settings.cache_budget_mb, canary=canary,
        history=history, max_message_bytes=settings.max_message_bytes,
        max_history=settings.max_history, max_candidates=settings.max_candidates)


def cache_summary(pipeline: RankingPipeline, budget_mb: float) -> str:
    """One line for the start-up log: cached context per request and per largest call."""
    buckets, runner = pipeline.assembler.buckets, pipeline.runner
    itemsize = runner.dtype.itemsize
    return (f"context cache {context_cache_bytes(runner.config, itemsize) / 1024:.1f} KiB per "
            f"request, {buckets.cache_bytes(runner.config, itemsize) / MIB:.1f} MiB in the "
            f"largest of {len(buckets.shapes())} call shapes (budget {budget_mb:g} MiB)")
