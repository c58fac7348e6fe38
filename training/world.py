"""A synthetic world whose engagement probabilities are known: the ground truth for training,
mock traffic and evaluation. Pure numpy, deterministic by `WorldConfig.seed`.

Letters: B rows (requests), S history slots, C candidates, A actions (19), V surfaces,
K latent size, P pool size (random posts a selection is drawn from).

The generative story
--------------------
* `num_topics` topic directions in R^K (unit vectors).
* Users mix a few topics (Dirichlet, concentration 0.3: most users care about 1-3 topics);
  their interest vector is that mix plus noise, normalised. Each user also has an
  `activity` offset added to every positive action (some people like everything).
* Authors specialise (Dirichlet 0.2 over topics) and have a `quality` offset. Authors differ in
  output: post counts follow a Zipf-like law.
* Each post has one author, a topic drawn from its author's mix, a vector = topic + noise
  (normalised) and a `quality` offset (a popularity signal independent of the user).
* Surfaces have a small additive effect on affinity and a small per-action effect.

Affinity of (user u, post p on surface v), standardised to mean 0 / std 1 over random pairs:

    raw = 2.0 * cos(u, p) + 1.0 * cos(u, author(p))
          + author_quality + post_quality + surface_bias[v]
    z   = (raw - mean) / std

and the true probability of action j:

    P(j) = sigmoid(base[j] + sens[j] * z + surface_action[v, j] + activity[u] * [j positive])

with `base`/`sens` per action from `ACTION_RATES`: positive actions have sens > 0, the four
negative ones (not_interested, block_author, mute_author, report) sens < 0. `dwell_time` is a
probability like the others.

Histories and candidates
------------------------
A history is the user's recent *engaged* feed: posts are picked from a pool of P random posts
with probability proportional to exp(3 * z) (the feed favours what the user likes), then each
action is drawn from the true probabilities. Calibration: on those items about 30% of the 19
actions are set on average (the statistic of the reference's `create_example_batch`, which sets
each action with probability 0.3), so replacing the random mock traffic by world traffic keeps
the shapes and statistics the rest of the system was sized for. Random (user, post) pairs engage
much less (about 15% of actions); candidates sit in between (about 25%). History lengths are
uniform in [S/2, S]; an item may have no action set (an impression without engagement).

A candidate set has round(relevant_fraction * C) *relevant* posts (the highest-affinity posts of
a pool of random posts) and the rest *irrelevant* (random posts), shuffled; candidates never
repeat each other or a post of the user's history.

Ids on the wire are u64: index i of kind k maps to a bijective 64-bit mix of
(k, seed, i + 1), so ids are stable for a seed, spread over the whole range, never 0, and
can be mapped back (`post_index`, ...) without a lookup table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from phoenix.actions import ACTION_NAMES, NEGATIVE_ACTIONS, NUM_ACTIONS
from phoenix.hashing import MIX64_MULTIPLIERS, mix64
from worker.errors import WorkerError
from worker.wire import REQUEST_SCHEMA

TRUTH_SCHEMA = "world-truth.v1"


class WorldError(WorkerError, ValueError):
    """A world configuration or id that the world cannot use."""


# (base logit at average affinity, sensitivity to standardised affinity z) per action.
# Common actions (favorite, click, dwell) have high bases; sharing, quoting, following and the
# negative actions are rare; report is the rarest.
ACTION_RATES: dict[str, tuple[float, float]] = {
    "favorite": (-0.8, 1.8),
    "reply": (-2.8, 1.1),
    "repost": (-2.3, 1.2),
    "photo_expand": (-1.3, 0.8),
    "click": (-0.6, 1.1),
    "profile_click": (-2.0, 0.9),
    "vqv": (-1.4, 0.7),
    "share": (-3.0, 1.0),
    "share_via_dm": (-3.3, 1.0),
    "share_via_copy_link": (-3.8, 0.9),
    "dwell": (-0.1, 1.2),
    "quote": (-3.6, 1.0),
    "quoted_click": (-2.8, 0.8),
    "follow_author": (-3.3, 1.2),
    "not_interested": (-3.2, -1.3),
    "block_author": (-5.2, -1.1),
    "mute_author": (-4.8, -1.1),
    "report": (-6.2, -1.0),
    "dwell_time": (-0.4, 1.1),
}
if set(ACTION_RATES) != set(ACTION_NAMES):  # import-time guard: actions.py changed
    raise ImportError(f"ACTION_RATES must cover exactly ACTION_NAMES; differs by "
                      f"{sorted(set(ACTION_RATES) ^ set(ACTION_NAMES))}")

_BASE = np.array([ACTION_RATES[a][0] for a in ACTION_NAMES])  # [A]
_SENS = np.array([ACTION_RATES[a][1] for a in ACTION_NAMES])  # [A]
_POSITIVE = np.array([a not in NEGATIVE_ACTIONS for a in ACTION_NAMES])  # [A] bool

# Affinity weights (see module docstring) and sampling knobs that are part of the story,
# not tuning knobs users need.
_W_POST = 2.0
_W_AUTHOR = 1.0
_HISTORY_SELECTIVITY = 3.0  # history posts are picked with weight exp(selectivity * z)

# Kind codes for ids (top byte of the pre-mix value).
_USER, _AUTHOR, _POST = 1, 2, 3
_M1, _M2 = MIX64_MULTIPLIERS
_M1_INV = pow(_M1, -1, 1 << 64)
_M2_INV = pow(_M2, -1, 1 << 64)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    num_users: int = 2000  # U users
    num_authors: int = 200  # authors; each post has one
    num_posts: int = 4000  # posts that can appear in histories and candidate sets
    num_topics: int = 16  # topic directions users and authors mix
    latent_dim: int = 16  # K, size of interest / post vectors
    num_surfaces: int = 16  # V, product surfaces (the model's vocabulary)
    history_len: int = 32  # S, maximum history items; lengths are uniform in [S/2, S]
    num_candidates: int = 8  # C, candidates per request
    relevant_fraction: float = 0.5  # share of candidates drawn from the user's best posts
    history_pool: int = 256  # P for histories: random posts one history is picked from
    candidate_pool: int = 64  # P for candidates: the relevant ones are the top of this pool
    seed: int = 0  # fixes the whole world (users, posts, ids, probabilities)

    def __post_init__(self) -> None:
        for name in ("num_users", "num_authors", "num_posts", "num_topics", "latent_dim",
                     "num_surfaces", "history_len", "num_candidates", "history_pool",
                     "candidate_pool"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorldError(f"WorldConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.relevant_fraction <= 1.0:
            raise WorldError(f"WorldConfig.relevant_fraction must be in [0, 1], "
                             f"got {self.relevant_fraction!r}")
        if self.history_pool < 2 * self.history_len:
            raise WorldError(f"history_pool ({self.history_pool}) must be at least "
                             f"2 * history_len ({2 * self.history_len}) to pick distinct posts")
        if self.candidate_pool < 2 * self.num_candidates:
            raise WorldError(f"candidate_pool ({self.candidate_pool}) must be at least "
                             f"2 * num_candidates ({2 * self.num_candidates})")
        # Room for a history and a candidate set of distinct posts (sampling checks the rest):
        # the default 4000 posts hold any candidate count up to the wire's 1024.
        needed = 2 * (self.history_len + self.num_candidates)
        if self.num_posts < max(needed, self.history_pool // 2):
            raise WorldError(f"num_posts ({self.num_posts}) is too small for history_len + "
                             f"num_candidates; use at least {max(needed, self.history_pool // 2)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise WorldError(f"WorldConfig.seed must be an int >= 0, got {self.seed!r}")

    @property
    def num_relevant(self) -> int:
        return int(round(self.relevant_fraction * self.num_candidates))


@dataclasses.dataclass(frozen=True, eq=False)
class RequestTruth:
    """Hidden ground truth for one request; never shown to the model."""

    request_id: str
    user_id: int
    candidate_post_ids: np.ndarray  # [c] uint64, in the request's candidate order
    probabilities: np.ndarray  # [c, A] float64, true P(action) per candidate
    relevant: np.ndarray  # [c] bool, drawn from the user's best posts

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; probabilities are listed in ACTION_NAMES order."""
        return {
            "schema": TRUTH_SCHEMA,
            "request_id": self.request_id,
            "user_id": int(self.user_id),
            "candidates": [
                {"post_id": int(pid), "relevant": bool(rel),
                 "probabilities": [round(float(p), 6) for p in probs]}
                for pid, rel, probs in zip(self.candidate_post_ids.tolist(),
                                           self.relevant.tolist(), self.probabilities)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RequestTruth":
        if data.get("schema") != TRUTH_SCHEMA:
            raise WorldError(f"a truth record must carry schema={TRUTH_SCHEMA!r}, "
                             f"got {data.get('schema')!r}")
        candidates = data["candidates"]
        probs = np.array([c["probabilities"] for c in candidates], dtype=np.float64)
        if probs.shape != (len(candidates), NUM_ACTIONS):
            raise WorldError(f"truth for {data.get('request_id')!r}: expected "
                             f"{NUM_ACTIONS} probabilities per candidate, got shape {probs.shape}")
        return cls(
            request_id=data["request_id"],
            user_id=int(data["user_id"]),
            candidate_post_ids=np.array([c["post_id"] for c in candidates], dtype=np.uint64),
            probabilities=probs,
            relevant=np.array([c["relevant"] for c in candidates], dtype=bool),
        )


# ----------------------------------------------------------------------------- ids


def _unshift(y: np.ndarray, shift: int) -> np.ndarray:
    """Inverse of x ^ (x >> shift) on uint64."""
    x = y.copy()
    for _ in range(64 // shift + 1):
        x = y ^ (x >> np.uint64(shift))
    return x


def _unmix64(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = _unshift(y, 31) * np.uint64(_M2_INV)
        x = _unshift(x, 27) * np.uint64(_M1_INV)
    return _unshift(x, 30)


# ----------------------------------------------------------------------------- world


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical(rng: np.random.Generator, cdf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Draws indices from a categorical distribution given by its cdf [n]."""
    return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(cdf) - 1)


def _first_occurrence(pool: np.ndarray) -> np.ndarray:
    """[B, P] -> [B, P] bool: True at the first occurrence of each value in its row."""
    order = np.argsort(pool, axis=1, kind="stable")  # [B, P]
    sorted_pool = np.take_along_axis(pool, order, axis=1)  # [B, P]
    first_sorted = np.ones(pool.shape, dtype=bool)
    first_sorted[:, 1:] = sorted_pool[:, 1:] != sorted_pool[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """The sampled world. Build with `World.create(config)`; all arrays are read-only."""

    config: WorldConfig
    user_vec: np.ndarray  # [U, K] unit interest vectors
    user_activity: np.ndarray  # [U] offset on positive-action logits
    author_vec: np.ndarray  # [num_authors, K] unit topic vectors
    author_quality: np.ndarray  # [num_authors]
    post_vec: np.ndarray  # [num_posts, K] unit vectors
    post_author: np.ndarray  # [num_posts] int author index
    post_topic: np.ndarray  # [num_posts] int topic index
    post_quality: np.ndarray  # [num_posts]
    surface_cdf: np.ndarray  # [V] how often each surface is used (cumulative)
    surface_bias: np.ndarray  # [V] affinity offset
    surface_action: np.ndarray  # [V, A] per-action logit offset
    affinity_mean: float  # standardisation of the raw affinity over random pairs
    affinity_std: float

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, config: WorldConfig = WorldConfig()) -> "World":
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x3A11D]))
        k, nt = config.latent_dim, config.num_topics
        topics = _normalise(rng.normal(size=(nt, k)))  # [nt, K]

        user_mix = rng.dirichlet(np.full(nt, 0.3), size=config.num_users)  # [U, nt]
        user_vec = _normalise(user_mix @ topics + 0.25 * rng.normal(size=(config.num_users, k))
                              / np.sqrt(k))  # [U, K]
        user_activity = rng.normal(0.0, 0.3, size=config.num_users)  # [U]

        author_mix = rng.dirichlet(np.full(nt, 0.2), size=config.num_authors)  # [Au, nt]
        author_vec = _normalise(author_mix @ topics)  # [Au, K]
        author_quality = rng.normal(0.0, 0.5, size=config.num_authors)  # [Au]
        output = rng.permutation(1.0 / np.arange(1, config.num_authors + 1) ** 0.8)  # [Au]
        post_author = _categorical(rng, np.cumsum(output / output.sum()),
                                   (config.num_posts,))  # [P]

        topic_cdf = np.cumsum(author_mix[post_author], axis=1)  # [P, nt]
        draws = rng.random((config.num_posts, 1)) * topic_cdf[:, -1:]
        post_topic = np.minimum((draws > topic_cdf).sum(axis=1), nt - 1)  # [P]
        post_vec = _normalise(topics[post_topic]
                              + 0.35 * rng.normal(size=(config.num_posts, k)))  # [P, K]
        post_quality = rng.normal(0.0, 0.4, size=config.num_posts)  # [P]

        v = config.num_surfaces
        surface_weight = np.exp(rng.normal(0.0, 1.0, size=v))  # skewed usage, like real apps
        surface_cdf = np.cumsum(surface_weight / surface_weight.sum())
        surface_bias = rng.normal(0.0, 0.15, size=v)  # [V]
        surface_action = rng.normal(0.0, 0.1, size=(v, NUM_ACTIONS))  # [V, A]

        world = cls(config=config, user_vec=user_vec, user_activity=user_activity,
                    author_vec=author_vec, author_quality=author_quality, post_vec=post_vec,
                    post_author=post_author, post_topic=post_topic, post_quality=post_quality,
                    surface_cdf=surface_cdf, surface_bias=surface_bias,
                    surface_action=surface_action, affinity_mean=0.0, affinity_std=1.0)
        # Standardise on a fixed sample of random pairs so z has mean 0 and std 1.
        n = 20000
        raw = world._raw_affinity(rng.integers(config.num_users, size=n),
                                  rng.integers(config.num_posts, size=n),
                                  _categorical(rng, surface_cdf, (n,)))
        world = dataclasses.replace(world, affinity_mean=float(raw.mean()),
                                    affinity_std=float(raw.std()))
        for field in dataclasses.fields(world):
            value = getattr(world, field.name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        return world

    # ------------------------------------------------------------------ ids

    def _to_id(self, kind: int, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.uint64)
        pre = (np.uint64(kind << 56) | np.uint64((self.config.seed & 0xFFFF) << 40)
               | (index + np.uint64(1)))
        return mix64(pre)

    def _from_id(self, kind: int, ids: Any, count: int, what: str) -> np.ndarray:
        ids_u = np.asarray(ids, dtype=np.uint64)
        pre = _unmix64(ids_u)
        index = (pre & np.uint64((1 << 40) - 1)).astype(np.int64) - 1
        seed_bits = (pre >> np.uint64(40)) & np.uint64(0xFFFF)
        ok = ((pre >> np.uint64(56)) == np.uint64(kind)) \
            & (seed_bits == np.uint64(self.config.seed & 0xFFFF)) \
            & (index >= 0) & (index < count)
        if not np.all(ok):
            bad = ids_u[~ok].ravel()[:3].tolist()
            raise WorldError(f"{what} ids {bad} do not belong to the world with seed "
                             f"{self.config.seed}; pass ids produced by this world")
        return index

    def user_id(self, index: Any) -> np.ndarray:
        """Internal user indices -> u64 wire ids (same shape)."""
        return self._to_id(_USER, index)

    def author_id(self, index: Any) -> np.ndarray:
        return self._to_id(_AUTHOR, index)

    def post_id(self, index: Any) -> np.ndarray:
        return self._to_id(_POST, index)

    def user_index(self, ids: Any) -> np.ndarray:
        """u64 wire ids -> internal indices; raises `WorldError` for a foreign id."""
        return self._from_id(_USER, ids, self.config.num_users, "user")

    def author_index(self, ids: Any) -> np.ndarray:
        return self._from_id(_AUTHOR, ids, self.config.num_authors, "author")

    def post_index(self, ids: Any) -> np.ndarray:
        return self._from_id(_POST, ids, self.config.num_posts, "post")

    # ------------------------------------------------------------------ probabilities

    def _raw_affinity(self, users: np.ndarray, posts: np.ndarray,
                      surfaces: np.ndarray | None) -> np.ndarray:
        """Broadcasting index arrays -> raw affinity of the broadcast shape."""
        u = self.user_vec[users]  # [..., K]
        p = self.post_vec[posts]  # [..., K]
        authors = self.post_author[posts]
        raw = (_W_POST * np.einsum("...k,...k->...", u, p)
               + _W_AUTHOR * np.einsum("...k,...k->...", u, self.author_vec[authors])
               + self.author_quality[authors] + self.post_quality[posts])
        if surfaces is not None:
            raw = raw + self.surface_bias[surfaces]
        return raw

    def affinity(self, users: np.ndarray, posts: np.ndarray,
                 surfaces: np.ndarray | None = None) -> np.ndarray:
        """Standardised affinity z for internal indices (broadcasting); no surface: average."""
        return (self._raw_affinity(users, posts, surfaces) - self.affinity_mean) \
            / self.affinity_std

    def probabilities_by_index(self, users: np.ndarray, posts: np.ndarray,
                               surfaces: np.ndarray) -> np.ndarray:
        """True P(action) for internal indices (broadcasting to a shape [...]) -> [..., A]."""
        users, posts, surfaces = np.broadcast_arrays(users, posts, surfaces)
        z = self.affinity(users, posts, surfaces)[..., None]  # [..., 1]
        logits = (_BASE + _SENS * z + self.surface_action[surfaces]
                  + np.where(_POSITIVE, self.user_activity[users][..., None], 0.0))  # [..., A]
        return _sigmoid(logits)

    def true_probabilities(self, user_ids: Any, post_ids: Any, surfaces: Any) -> np.ndarray:
        """True P(action) for wire ids: u64 user ids, u64 post ids, surfaces in [0, V).

        Arguments broadcast together to a shape [...]; returns [..., A] float64 in (0, 1),
        actions in ACTION_NAMES order. Raises `WorldError` for ids or surfaces not of this world.
        """
        surfaces = np.asarray(surfaces)
        if surfaces.size and (surfaces.min() < 0 or surfaces.max() >= self.config.num_surfaces):
            raise WorldError(f"surfaces must be in [0, {self.config.num_surfaces}), got values "
                             f"from {surfaces.min()} to {surfaces.max()}")
        return self.probabilities_by_index(self.user_index(user_ids), self.post_index(post_ids),
                                           surfaces.astype(np.int64))

    # ------------------------------------------------------------------ sampling

    def _sample_rows(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        """B requests in internal indices (history left-aligned, padding after `history_len`)."""
        cfg = self.config
        s, c, b = cfg.history_len, cfg.num_candidates, batch
        rows = np.arange(b)[:, None]  # [B, 1]
        users = rng.integers(cfg.num_users, size=b)  # [B]

        # History: Gumbel-top-S over a pool, weight exp(selectivity * z), no repeated post.
        pool = rng.integers(cfg.num_posts, size=(b, cfg.history_pool))  # [B, Ph]
        z = self.affinity(users[:, None], pool)  # [B, Ph]
        keys = _HISTORY_SELECTIVITY * z + rng.gumbel(size=z.shape)  # [B, Ph]
        keys[~_first_occurrence(pool)] = -np.inf
        if np.any(np.isinf(np.sort(keys, axis=1)[:, -s])):
            raise WorldError("a history pool had fewer distinct posts than history_len; "
                             "raise history_pool or num_posts")
        top = np.argpartition(-keys, s - 1, axis=1)[:, :s]  # [B, S]
        top = np.take_along_axis(top, np.argsort(rng.random((b, s)), axis=1), axis=1)  # shuffle
        hist_posts = pool[rows, top]  # [B, S]
        hist_len = rng.integers(s // 2, s + 1, size=b)  # [B] in [S/2, S]
        hist_mask = np.arange(s)[None, :] < hist_len[:, None]  # [B, S]
        hist_surfaces = _categorical(rng, self.surface_cdf, (b, s))  # [B, S]
        hist_probs = self.probabilities_by_index(users[:, None], hist_posts,
                                                 hist_surfaces)  # [B, S, A]
        hist_actions = (rng.random(hist_probs.shape) < hist_probs) & hist_mask[..., None]

        # Candidates: the top-n_rel of a pool are relevant, the rest are the pool's first
        # remaining posts (random); none repeats another candidate or a (valid) history post.
        pool = rng.integers(cfg.num_posts, size=(b, cfg.candidate_pool))  # [B, Pc]
        in_history = ((pool[:, :, None] == hist_posts[:, None, :])
                      & hist_mask[:, None, :]).any(axis=2)  # [B, Pc]
        eligible = _first_occurrence(pool) & ~in_history  # [B, Pc]
        if np.any(eligible.sum(axis=1) < c):
            raise WorldError("a candidate pool had fewer than num_candidates eligible posts; "
                             "raise candidate_pool or num_posts")
        n_rel = cfg.num_relevant
        z = np.where(eligible, self.affinity(users[:, None], pool), -np.inf)  # [B, Pc]
        rel_pos = np.argsort(-z, axis=1, kind="stable")[:, :n_rel]  # [B, n_rel]
        chosen = np.zeros_like(eligible)
        np.put_along_axis(chosen, rel_pos, True, axis=1)
        rest_key = np.where(eligible & ~chosen, -np.arange(cfg.candidate_pool)[None, :], -np.inf)
        irr_pos = np.argsort(-rest_key, axis=1, kind="stable")[:, :c - n_rel]  # [B, C-n_rel]
        cand_pos = np.concatenate([rel_pos, irr_pos], axis=1)  # [B, C]
        relevant = np.arange(c)[None, :].repeat(b, axis=0) < n_rel  # [B, C]
        order = np.argsort(rng.random((b, c)), axis=1)  # shuffle: position carries no signal
        cand_posts = pool[rows, np.take_along_axis(cand_pos, order, axis=1)]  # [B, C]
        relevant = np.take_along_axis(relevant, order, axis=1)  # [B, C]
        cand_surfaces = _categorical(rng, self.surface_cdf, (b, c))  # [B, C]
        cand_probs = self.probabilities_by_index(users[:, None], cand_posts,
                                                 cand_surfaces)  # [B, C, A]
        return {
            "users": users, "hist_posts": hist_posts, "hist_len": hist_len,
            "hist_mask": hist_mask, "hist_surfaces": hist_surfaces,
            "hist_actions": hist_actions, "cand_posts": cand_posts,
            "cand_surfaces": cand_surfaces, "cand_probs": cand_probs, "relevant": relevant,
        }

    def sample_training_batch(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        """B training rows as ids (not hashes), labels drawn from the true probabilities.

        History is left-aligned: slots [0, history_len) hold items (most recent last), the rest
        are padding with id 0, no actions and surface 0.

        Returns:
          user_ids [B] uint64; history_len [B] int32;
          history_post_ids, history_author_ids [B, S] uint64; history_actions [B, S, A] float32;
          history_surfaces [B, S] int32;
          candidate_post_ids, candidate_author_ids [B, C] uint64; candidate_surfaces [B, C] int32;
          labels [B, C, A] float32 (Bernoulli draws); true_probs [B, C, A] float32;
          relevant [B, C] bool.
        """
        r = self._sample_rows(rng, batch)
        mask = r["hist_mask"]
        labels = rng.random(r["cand_probs"].shape) < r["cand_probs"]  # [B, C, A]
        zero = np.uint64(0)
        return {
            "user_ids": self.user_id(r["users"]),
            "history_len": r["hist_len"].astype(np.int32),
            "history_post_ids": np.where(mask, self.post_id(r["hist_posts"]), zero),
            "history_author_ids": np.where(
                mask, self.author_id(self.post_author[r["hist_posts"]]), zero),
            "history_actions": r["hist_actions"].astype(np.float32),
            "history_surfaces": np.where(mask, r["hist_surfaces"], 0).astype(np.int32),
            "candidate_post_ids": self.post_id(r["cand_posts"]),
            "candidate_author_ids": self.author_id(self.post_author[r["cand_posts"]]),
            "candidate_surfaces": r["cand_surfaces"].astype(np.int32),
            "labels": labels.astype(np.float32),
            "true_probs": r["cand_probs"].astype(np.float32),
            "relevant": r["relevant"],
        }

    def sample_requests(self, rng: np.random.Generator,
                        request_ids: list[str]) -> list[tuple[dict[str, Any], RequestTruth]]:
        """One wire request (ranking-request.v1 dict, no timestamp) and its truth per id."""
        r = self._sample_rows(rng, len(request_ids))
        user_ids = self.user_id(r["users"]).tolist()
        hist_post_ids = self.post_id(r["hist_posts"]).tolist()
        hist_author_ids = self.author_id(self.post_author[r["hist_posts"]]).tolist()
        hist_surfaces = r["hist_surfaces"].tolist()
        cand_post_ids = self.post_id(r["cand_posts"])
        cand_author_ids = self.author_id(self.post_author[r["cand_posts"]]).tolist()
        cand_surfaces = r["cand_surfaces"].tolist()
        out = []
        for i, request_id in enumerate(request_ids):
            n = int(r["hist_len"][i])
            actions = r["hist_actions"][i]
            history = [
                {"post_id": hist_post_ids[i][j], "author_id": hist_author_ids[i][j],
                 "actions": [ACTION_NAMES[a] for a in np.flatnonzero(actions[j])],
                 "surface": hist_surfaces[i][j]}
                for j in range(n)
            ]
            pids = cand_post_ids[i].tolist()
            candidates = [
                {"post_id": pids[j], "author_id": cand_author_ids[i][j],
                 "surface": cand_surfaces[i][j]}
                for j in range(len(pids))
            ]
            request = {"schema": REQUEST_SCHEMA, "request_id": request_id,
                       "user_id": user_ids[i], "history": history, "candidates": candidates}
            truth = RequestTruth(request_id=request_id, user_id=user_ids[i],
                                 candidate_post_ids=cand_post_ids[i].copy(),
                                 probabilities=r["cand_probs"][i].copy(),
                                 relevant=r["relevant"][i].copy())
            out.append((request, truth))
        return out

    def sample_request(self, rng: np.random.Generator,
                       request_id: str | None = None) -> tuple[dict[str, Any], RequestTruth]:
        """One ranking-request.v1 dict (ids as Python ints, no timestamp) and its truth.

        `request_id` defaults to 16 hex digits drawn from `rng`.
        """
        if request_id is None:
            request_id = f"{int(rng.integers(0, 2**63)):016x}"
        return self.sample_requests(rng, [request_id])[0]

