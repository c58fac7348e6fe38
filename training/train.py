"""Train the Phoenix ranker on the synthetic world and write a checkpoint.

    python -m training.train --out checkpoints/demo.npz [--steps N --batch B --seed S --lr LR]

Params and hash tables are trained together (one pytree) with per-action sigmoid
cross-entropy on the valid candidates, AdamW on a warmup + cosine schedule with global-norm
clipping. The step is a pure `train_step(state, batch) -> (state, metrics)` under `jax.jit`.
Deterministic by seed: batch i is drawn from (seed, i), parameters from PRNGKey(seed).

Letters: B rows, C candidates, A actions.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from phoenix import checkpoint
from phoenix.config import HashConfig, RankerConfig
from phoenix.embeddings import HashTables, init_tables, lookup
from phoenix.model import build_model
from phoenix.params import Params, init_params
from training.batches import BatchSampler, TrainBatch
from training.world import World, WorldConfig

# The demo model: the reference demo transformer (D=128, 2 layers, S=32, C=8, the
# golden-parity architecture) with hash tables sized for the world (2000 users, 4000 posts,
# 200 authors): about 1-2 ids per row per hash function, ~7 MB of tables.
DEMO_MODEL_CONFIG = RankerConfig(
    hashes=HashConfig(user_rows=2048, item_rows=4096, author_rows=512))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200  # Optimiser steps.
    batch_size: int = 64  # B requests per step (C candidates each).
    learning_rate: float = 3e-3  # Peak of the schedule.
    warmup_steps: int = 100  # Linear warmup from 0 to the peak.
    end_lr_fraction: float = 0.05  # Cosine decay ends at this fraction of the peak.
    weight_decay: float = 1e-4  # AdamW decay, on matrices and tables only (not norm scales).
    clip_norm: float = 1.0  # Global gradient-norm clip.
    seed: int = 0  # Batches and initial parameters.
    world_seed: int = 0  # Which synthetic world (WorldConfig.seed) to learn.
    log_every: int = 50  # Steps between logged (mean) losses.

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must be in [0, steps={self.steps}), "
                             f"got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")


class Trainable(NamedTuple):
    """Everything the optimiser updates: one pytree."""

    params: Params
    tables: HashTables


class TrainState(NamedTuple):
    step: jnp.ndarray  # [] int32
    trainable: Trainable
    opt_state: optax.OptState


Metrics = dict[str, jnp.ndarray]


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_steps,
        decay_steps=tc.steps, end_value=tc.learning_rate * tc.end_lr_fraction)
    decay_mask = lambda tree: jax.tree_util.tree_map(lambda x: x.ndim >= 2, tree)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(schedule, weight_decay=tc.weight_decay, mask=decay_mask))


def init_state(config: RankerConfig, optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
    """The same random init as `RankingRunner.create(config, seed)`."""
    params_key, tables_key = jax.random.split(jax.random.PRNGKey(seed))
    trainable = Trainable(init_params(config, params_key), init_tables(config, tables_key))
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                      opt_state=optimizer.init(trainable))


def batch_loss(apply_fn: Callable, trainable: Trainable, batch: TrainBatch) -> jnp.ndarray:
    """Mean sigmoid cross-entropy over valid candidates and all actions."""
    emb = lookup(trainable.tables, batch.inputs)  # [B, ., n, D]
    logits = apply_fn(trainable.params, batch.inputs, emb)  # [B, C, A]
    bce = optax.sigmoid_binary_cross_entropy(logits, batch.labels)  # [B, C, A]
    weight = batch.valid[:, :, None]  # [B, C, 1]
    return jnp.sum(bce * weight) / (jnp.maximum(jnp.sum(batch.valid), 1.0) * bce.shape[-1])


def make_train_step(config: RankerConfig, optimizer: optax.GradientTransformation
                    ) -> Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]]:
    """-> a pure `train_step(state, batch) -> (state, metrics)`, to be jitted by the caller."""
    apply_fn = build_model(config).apply

    def train_step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, Metrics]:
        loss, grads = jax.value_and_grad(
            lambda t: batch_loss(apply_fn, t, batch))(state.trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        # Row 0 is the padding row of every slice: keep it exactly zero (decay never moves a
        # zero, and padding gets no gradient, but the invariant should not rest on that).
        tables = HashTables(*(t.at[:, 0, :].set(0.0) for t in trainable.tables))
        trainable = trainable._replace(tables=tables)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, trainable, opt_state), metrics

    return train_step


@functools.lru_cache(maxsize=8)
def jitted_train_step(config: RankerConfig, tc: TrainConfig) -> Callable:
    """The jitted step for a model and optimiser, built once per process: runs that differ
    only in seeds or logging reuse its compilation (the state is donated, not kept)."""
    optimizer_fields = dataclasses.replace(tc, seed=0, world_seed=0, log_every=1)
    if optimizer_fields != tc:
        return jitted_train_step(config, optimizer_fields)
    return jax.jit(make_train_step(config, make_optimizer(tc)), donate_argnums=0)


class TrainResult(NamedTuple):
    state: TrainState
    losses: list[tuple[int, float]]  # (step, mean loss over the logging window)
    seconds: float


def train(config: RankerConfig, tc: TrainConfig, progress: bool = True,
          world: World | None = None) -> TrainResult:
    """Runs `tc.steps` jitted steps on world batches; logs the windowed mean loss.

    `world` defaults to the default world of seed `tc.world_seed` (tests pass a small one).
    """
    if world is None:
        world = World.create(WorldConfig(seed=tc.world_seed))
    sampler = BatchSampler(world, config, tc.batch_size, tc.seed)
    optimizer = make_optimizer(tc)
    state = init_state(config, optimizer, tc.seed)
    step_fn = jitted_train_step(config, tc)
    losses: list[tuple[int, float]] = []
    window: list[jnp.ndarray] = []
    start = time.perf_counter()
    bar = tqdm(range(tc.steps), desc="train", disable=not progress, unit="step",
               file=sys.stderr)
    for i in bar:
        # Dispatch is asynchronous: the next batch is sampled while this step runs.
        state, metrics = step_fn(state, sampler.batch(i))
        window.append(metrics["loss"])
        if (i + 1) % tc.log_every == 0 or i + 1 == tc.steps:
            mean = float(np.mean(jax.device_get(window)))
            losses.append((i + 1, mean))
            window = []
            bar.set_postfix(loss=f"{mean:.4f}")
            if progress:
                tqdm.write(f"step {i + 1:5d}  loss {mean:.4f}", file=sys.stderr)
    jax.block_until_ready(state)
    return TrainResult(state, losses, time.perf_counter() - start)


def params_digest(trainable: Trainable, length: int = 8) -> str:
    """Short sha256 of every trained array (names, shapes and bytes), in a fixed order."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(trainable))
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(leaf, np.float32)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:length]


def model_version(tc: TrainConfig, trainable: Trainable) -> str:
    return (f"demo-world{tc.world_seed}-seed{tc.seed}-steps{tc.steps}-"
            f"{params_digest(trainable)}")


def save_checkpoint(path: str | Path, config: RankerConfig, tc: TrainConfig,
                    trainable: Trainable) -> str:
    """Writes the checkpoint (creating its folder) and returns its model version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    version = model_version(tc, trainable)
    host = jax.device_get(trainable)
    checkpoint.save(path, config, host.params, host.tables, version)
    return version


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrainConfig()
    h = DEMO_MODEL_CONFIG.hashes
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="checkpoints/demo.npz", help="checkpoint file to write")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch_size, help="requests per step")
    p.add_argument("--seed", type=int, default=d.seed, help="batches and initial parameters")
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--user-rows", type=int, default=h.user_rows)
    p.add_argument("--item-rows", type=int, default=h.item_rows)
    p.add_argument("--author-rows", type=int, default=h.author_rows)
    p.add_argument("--no-progress", action="store_true", help="no progress bar or loss log")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=args.lr,
                     warmup_steps=min(args.warmup, args.steps - 1),
                     weight_decay=args.weight_decay, seed=args.seed,
                     world_seed=args.world_seed, log_every=args.log_every)
    config = dataclasses.replace(DEMO_MODEL_CONFIG, hashes=dataclasses.replace(
        DEMO_MODEL_CONFIG.hashes, user_rows=args.user_rows, item_rows=args.item_rows,
        author_rows=args.author_rows))
    result = train(config, tc, progress=not args.no_progress)
    version = save_checkpoint(args.out, config, tc, result.state.trainable)
    size_mb = Path(args.out).stat().st_size / 1e6
    print(f"trained {tc.steps} steps x {tc.batch_size} requests in {result.seconds:.1f} s; "
          f"final loss {result.losses[-1][1]:.4f}")
    print(f"wrote {args.out} ({size_mb:.1f} MB), model_version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
