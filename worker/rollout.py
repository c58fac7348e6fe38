"""Live model rollout: a new checkpoint is loaded, checked and compiled beside the model that
serves, then swapped in between two batches. Knows the pipeline and the runner, not Kafka.

`checkpoint` may be a file (replaced in place, ideally by rename) or a directory of versions
(the newest `*.npz` by modification time serves). A candidate is refused, and the serving
model kept, unless it loads with pickles refused, has the serving model's config, has only
finite parameters and tables, and scores a fixed probe batch without error and not all-equal;
then every bucket shape is compiled before the swap, so no request waits for a compile.
A refused file is not tried again until it changes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import jax
import numpy as np

from phoenix.hashing import mix64
from phoenix.model import RecsysBatch
from phoenix.runner import RankingRunner
from worker.errors import WorkerError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".npz"


# Salts the canary split so it is unrelated to the embedding hashes; fixed, so that a user
# keeps their model across restarts and releases.
_CANARY_SALT = np.uint64(0xC0FFEE5EED5A1700)


def in_canary(user_ids: np.ndarray, share: float) -> np.ndarray:
    """`[n]` bool: which users the canary model ranks. A user always lands on the same side,
    and raising the share only adds users to the canary."""
    ids = np.asarray(user_ids, dtype=np.uint64)
    if share <= 0.0:
        return np.zeros(ids.shape, bool)
    if share >= 1.0:
        return np.ones(ids.shape, bool)
    return mix64(ids ^ _CANARY_SALT) < np.uint64(int(share * 2.0**64))


@dataclasses.dataclass(frozen=True)
class Canary:
    """A second model for `share` of the users (by `in_canary`)."""

    runner: RankingRunner
    share: float


class RolloutError(WorkerError, ValueError):
    """A new checkpoint that must not serve; the message names the file and the reason."""


def newest_checkpoint(path: str | os.PathLike) -> Path | None:
    """`path` itself if it is a file; the newest checkpoint in it if it is a directory (by
    modification time, then name); None if there is none."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix == CHECKPOINT_SUFFIX and p.is_file()]
        return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)
    return path if path.is_file() else None


def _stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def probe_batch(runner: RankingRunner, requests: int = 2, seed: int = 1234) -> RecsysBatch:
    """A fixed batch of real-looking requests `[requests, C]`: every slot holds hashes in
    the tables' range, so a model that scores them all alike is broken, not idle."""
    config, rng = runner.config, np.random.default_rng(seed)
    h, s, c = config.hashes, config.history_seq_len, config.candidate_seq_len

    def ids(*shape: int) -> np.ndarray:
        return rng.integers(1, min(h.item_rows, h.author_rows, h.user_rows), shape,
                            dtype=np.int32)

    return RecsysBatch(
        user_hashes=ids(requests, h.num_user_hashes),
        history_post_hashes=ids(requests, s, h.num_item_hashes),
        history_author_hashes=ids(requests, s, h.num_author_hashes),
        history_actions=(rng.random((requests, s, config.num_actions)) < 0.2).astype(
            np.float32),
        history_product_surface=rng.integers(0, config.product_surface_vocab_size,
                                             (requests, s), dtype=np.int32),
        candidate_post_hashes=ids(requests, c, h.num_item_hashes),
        candidate_author_hashes=ids(requests, c, h.num_author_hashes),
        candidate_product_surface=rng.integers(0, config.product_surface_vocab_size,
                                               (requests, c), dtype=np.int32))


def verify(runner: RankingRunner, path: Path) -> None:
    """Raises `RolloutError` unless `runner`, loaded from `path` with the serving model's
    config, may serve: finite values, and a probe batch scored without error and not all
    alike."""
    leaves = jax.tree_util.tree_leaves_with_path((runner.params, runner.tables))
    for where, leaf in leaves:
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise RolloutError(f"{path}: {jax.tree_util.keystr(where)} has non-finite values")
    try:
        output = runner.rank_cached(probe_batch(runner))
    except Exception as error:  # noqa: BLE001 (any failure of the probe refuses the file)
        raise RolloutError(f"{path}: the probe batch failed: {error!r}") from error
    if not np.all(np.isfinite(output.scores)) or np.ptp(output.scores) == 0.0:
        raise RolloutError(f"{path}: the probe batch's scores are all equal or not finite")


@dataclasses.dataclass
class Candidate:
    """A new checkpoint ready to serve (loaded, verified, compiled)."""

    path: Path
    runner: RankingRunner


class CheckpointWatcher:
    """Finds a changed checkpoint and prepares it; the caller swaps it in.

    Create it before loading the first model: a version written while the worker loads and
    compiles is then still new at the first `poll()`. `poll()` is cheap (stat calls) and says
    which file to try; `prepare()` is slow (load, verify, compile every shape) and runs off
    the ranker thread."""

    def __init__(self, checkpoint: str | os.PathLike):
        self.checkpoint = Path(checkpoint)
        current = newest_checkpoint(self.checkpoint)
        self._seen = _stamp(current) if current is not None else None

    def poll(self) -> Path | None:
        """The checkpoint to try, if it is not the one last loaded or refused."""
        path = newest_checkpoint(self.checkpoint)
        if path is None:
            return None
        try:
            stamp = _stamp(path)
        except OSError:  # replaced between listing and stat: next poll
            return None
        if stamp == self._seen:
            return None
        self._seen = stamp
        return path

    @staticmethod
    def prepare(path: Path, serving: RankingRunner, shapes: list[tuple[int, int]]
                ) -> Candidate:
        """Load, verify against `serving` and compile `shapes` of `path`; `RolloutError`
        naming the file if it must not serve."""
        try:
            runner = RankingRunner.from_checkpoint(path, expected_config=serving.config,
                                                   dtype=serving.dtype,
                                                   scoring=serving.scoring)
        except Exception as error:  # noqa: BLE001 (a file being written or broken: refuse)
            reason = str(error) if str(path) in str(error) else f"{path}: {error}"
            raise RolloutError(f"cannot load it: {reason}") from error
        verify(runner, path)
        runner.warmup(shapes)
        return Candidate(path, runner)
