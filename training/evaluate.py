"""Ranking quality on held-out world requests: the trained model against baselines.

    python -m training.evaluate --checkpoint checkpoints/demo.npz [--requests 2000 --seed 12345]
        [--json bench/eval.json --plot bench/plots/eval.png]

Requests are sampled from the same world the model was trained on (its seed is read from the
command line, default 0) with a different random stream, so users and posts are known but the
requests are new. Every method ranks the same requests:

* trained  - the checkpoint, through the serving path: wire dict -> msgpack ->
             `worker.validation.parse_request` -> `worker.assembly.Assembler` ->
             `RankingRunner.rank` -> `Assembler.rankings` (what the worker publishes);
* table    - the checkpoint through the server-side history path: each request's history
             ingested as engagement.v1 messages into a history table, the request sent as
             ranking-request.v2 without history (must equal `trained` exactly);
* random   - `RankingRunner.create(config, seed)`: a randomly initialised model, same path;
* zero     - the reference's zero initialisation (every parameter and table row 0): every
             probability is 0.5, so scores tie and the order is the input order, apart from the
             author-diversity attenuation of repeated authors; same path;
* popularity - per post and action, the engagement rate observed over the candidate
             impressions of a training-distribution log (`--popularity-rows` requests, Bernoulli
             labels), smoothed towards the global rate with a prior of 5 impressions;
* oracle   - the world's true probabilities.
Popularity and oracle probabilities go through the same final scoring as the runner
(`phoenix.scoring.weighted_scores` + `finalize`, ScoringConfig defaults, author diversity on).

Metrics (see training/ranking_metrics.py):
* AUC per action over all held-out candidates, against labels drawn once (seeded) from the
  true probabilities - the labels a real log would hold, so even the oracle stays below 1;
  "mean AUC" averages the 19 actions (rare actions have few positives and are noisier).
* NDCG@5 and NDCG@all of each request's final order, with gains = the true expected weighted
  score (true probabilities . DEFAULT_ACTION_WEIGHTS, no diversity) shifted per request so the
  worst candidate gains 0; averaged over requests.

Letters: n requests, c candidates per request, A actions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from phoenix.actions import ACTION_NAMES, NUM_ACTIONS
from phoenix.config import RankerConfig
from phoenix.hashing import Hasher
from phoenix.runner import RankingRunner
from phoenix.scoring import ScoringConfig, finalize, weighted_scores
from training import ranking_metrics
from training.world import RequestTruth, World, WorldConfig
from worker import codec, history
from worker.assembly import Assembler, Buckets, widths_for
from worker.engagement import encode_engagement, parse_engagement
from worker.request import RankingRequest
from worker.validation import ValidationLimits, parse_request
from worker.wire import ENGAGEMENT_SCHEMA, REQUEST_SCHEMAS, REQUEST_SCHEMA_V2

_LABEL_STREAM = 0x1ABE1  # separates the label draws from the request draws of a seed
_POPULARITY_STREAM = 0x9091
_POPULARITY_PRIOR = 5.0  # pseudo-impressions at the global rate (posts seen rarely)
_CHUNK = 256  # requests per assembly (the model calls are cut to the bucket sizes)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    requests: int = 2000  # Held-out requests.
    seed: int = 12345  # Request and label draws; keep it different from the training seed.
    world_seed: int = 0  # The world the checkpoint was trained on.
    random_seed: int = 0  # Seed of the randomly initialised baseline model.
    popularity_rows: int = 20000  # Logged requests the popularity baseline counts.


class MethodRankings(NamedTuple):
    """One method's answer for every request (candidates in request order)."""

    probabilities: list[np.ndarray]  # n x [c, A]
    orders: list[np.ndarray]  # n x [c] candidate indices, best first


class MethodResult(NamedTuple):
    name: str
    auc: dict[str, float]  # per action
    mean_auc: float
    ndcg_at_5: float
    ndcg_all: float

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "mean_auc": self.mean_auc, "ndcg@5": self.ndcg_at_5,
                "ndcg@all": self.ndcg_all}


class HeldOut(NamedTuple):
    wire: list[dict[str, Any]]  # ranking-request.v1 dicts
    truths: list[RequestTruth]
    labels: list[np.ndarray]  # n x [c, A] bool, drawn from the true probabilities


# ----------------------------------------------------------------------------- data


def held_out(world: World, n: int, seed: int) -> HeldOut:
    rng = np.random.default_rng(seed)
    pairs = world.sample_requests(rng, [f"eval-{seed}-{i}" for i in range(n)])
    wire = [request for request, _ in pairs]
    truths = [truth for _, truth in pairs]
    label_rng = np.random.default_rng(np.random.SeedSequence([seed, _LABEL_STREAM]))
    labels = [label_rng.random(t.probabilities.shape) < t.probabilities for t in truths]
    return HeldOut(wire, truths, labels)


# ----------------------------------------------------------------------------- methods


def rank_with_runner(runner: RankingRunner, wire: Sequence[dict[str, Any]]) -> MethodRankings:
    """The worker's path: encode, parse + validate, assemble, jitted rank, per-request rankings."""
    limits = ValidationLimits.from_config(runner.config)
    widths = widths_for(runner.config.candidate_seq_len, limits.max_candidates)
    assembler = Assembler(runner.config, Buckets(widths=widths))
    requests = [parse_request(codec.encode_request(w), limits) for w in wire]
    return _rank_requests(runner, assembler, requests)


def rank_through_table(runner: RankingRunner, wire: Sequence[dict[str, Any]]) -> MethodRankings:
    """The worker's server-side history path: each request's history goes into a history
    table as engagement.v1 messages (oldest first, one millisecond apart), and the request is
    sent as ranking-request.v2 without history and ranked with the table's. Each request gets
    a fresh table, so its user's history is exactly the one it carried."""
    limits = ValidationLimits.from_config(runner.config)
    widths = widths_for(runner.config.candidate_seq_len, limits.max_candidates)
    assembler = Assembler(runner.config, Buckets(widths=widths))
    requests = []
    for w in wire:
        table: history.HistoryTable = {}
        for t, item in enumerate(w["history"], start=1):
            engagement = {"schema": ENGAGEMENT_SCHEMA, "user_id": w["user_id"],
                          "timestamp_ms": t, **item}
            history.apply(table, parse_engagement(encode_engagement(engagement), limits),
                          max(len(w["history"]), 1))
        bare = {key: value for key, value in w.items() if key != "history"}
        request = parse_request(codec.encode_request({**bare, "schema": REQUEST_SCHEMA_V2}),
                                limits, REQUEST_SCHEMAS)
        requests.append(history.with_table_history(request, history.lookup(table)(w["user_id"]),
                                                   limits.history_keep))
    return _rank_requests(runner, assembler, requests)


def _rank_requests(runner: RankingRunner, assembler: Assembler,
                   requests: Sequence[RankingRequest]) -> MethodRankings:
    probabilities, orders = [], []
    for start in range(0, len(requests), _CHUNK):
        for ranking in assembler.rank(requests[start:start + _CHUNK], runner.rank_cached):
            probabilities.append(ranking.probabilities)
            orders.append(ranking.order)
    return MethodRankings(probabilities, orders)


def rank_probabilities(probabilities: Sequence[np.ndarray], wire: Sequence[dict[str, Any]],
                       config: RankerConfig, scoring: ScoringConfig = ScoringConfig()) -> MethodRankings:
    """Orders given per-candidate probabilities with the runner's own scoring functions
    (weighted score, author diversity, stable order), all requests in one padded batch."""
    hasher = Hasher(config.hashes)
    counts = [len(p) for p in probabilities]
    n, c_max = len(counts), max(counts)
    probs = np.zeros((n, c_max, NUM_ACTIONS), np.float32)  # [n, c_max, A]
    authors = np.zeros((n, c_max), np.uint64)  # [n, c_max], 0 = padding
    valid = np.zeros((n, c_max), bool)  # [n, c_max]
    for i, (p, request) in enumerate(zip(probabilities, wire)):
        probs[i, :counts[i]] = p
        authors[i, :counts[i]] = [c["author_id"] for c in request["candidates"]]
        valid[i, :counts[i]] = True
    raw = weighted_scores(probs, scoring.weight_vector())  # [n, c_max]
    _, order = finalize(raw, hasher.authors(authors), valid,  # [n, c_max, na]
                        scoring.diversity_params())
    order = np.asarray(order)  # padding sorts last
    return MethodRankings(list(probabilities), [order[i, :counts[i]] for i in range(n)])


def popularity_rates(world: World, rows: int, seed: int, chunk: int = 4096) -> np.ndarray:
    """[num_posts, A] smoothed per-post action rates over logged candidate impressions."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _POPULARITY_STREAM]))
    num_posts = world.config.num_posts
    positives = np.zeros((num_posts, NUM_ACTIONS))
    impressions = np.zeros(num_posts)
    for start in range(0, rows, chunk):
        sample = world.sample_training_batch(rng, min(chunk, rows - start))
        posts = world.post_index(sample["candidate_post_ids"]).ravel()  # [B*C]
        np.add.at(positives, posts, sample["labels"].reshape(-1, NUM_ACTIONS))
        impressions += np.bincount(posts, minlength=num_posts)
    global_rate = positives.sum(axis=0) / max(impressions.sum(), 1.0)  # [A]
    return (positives + _POPULARITY_PRIOR * global_rate) \
        / (impressions[:, None] + _POPULARITY_PRIOR)


def rank_popularity(world: World, data: HeldOut, ec: EvalConfig,
                    config: RankerConfig) -> MethodRankings:
    rates = popularity_rates(world, ec.popularity_rows, ec.seed)  # [num_posts, A]
    probabilities = [rates[world.post_index(t.candidate_post_ids)] for t in data.truths]
    return rank_probabilities(probabilities, data.wire, config)


def zero_runner(config: RankerConfig) -> RankingRunner:
    """The reference's zero-initialised model (every probability 0.5)."""
    template = RankingRunner.create(config)
    zeros = lambda tree: jax.tree_util.tree_map(np.zeros_like, jax.device_get(tree))  # noqa: E731
    return RankingRunner(config, zeros(template.params), zeros(template.tables),
                         model_version="zero-init")


# ----------------------------------------------------------------------------- metrics


def score_method(name: str, ranked: MethodRankings, data: HeldOut,
                 scoring: ScoringConfig = ScoringConfig()) -> MethodResult:
    probs = np.concatenate(ranked.probabilities)  # [N, A]
    labels = np.concatenate(data.labels)  # [N, A]
    auc = {action: ranking_metrics.auc(probs[:, i], labels[:, i]) for i, action in
           enumerate(ACTION_NAMES)}
    weights = scoring.weight_vector().astype(np.float64)
    ndcg5, ndcg_all = [], []
    for truth, order in zip(data.truths, ranked.orders):
        gains = ranking_metrics.shift_gains(truth.probabilities @ weights)  # [c]
        ndcg5.append(ranking_metrics.ndcg(gains, order, 5))
        ndcg_all.append(ranking_metrics.ndcg(gains, order))
    return MethodResult(name, auc, float(np.nanmean(list(auc.values()))),
                        float(np.mean(ndcg5)), float(np.mean(ndcg_all)))


def gap_closed(value: float, low: float, high: float) -> float:
    """Share of the distance from `low` (random) to `high` (oracle) that `value` covers."""
    return (value - low) / (high - low) if high != low else float("nan")


def evaluate(trained: RankingRunner, ec: EvalConfig,
             methods: Sequence[str] = ("trained", "table", "random", "zero", "popularity",
                                       "oracle"),
             log: Callable[[str], None] = lambda _: None) -> dict[str, MethodResult]:
    """Ranks `ec.requests` held-out requests with each method and scores them."""
    world = World.create(WorldConfig(seed=ec.world_seed))
    data = held_out(world, ec.requests, ec.seed)
    config = trained.config
    makers: dict[str, Callable[[], MethodRankings]] = {
        "trained": lambda: rank_with_runner(trained, data.wire),
        "table": lambda: rank_through_table(trained, data.wire),
        "random": lambda: rank_with_runner(
            RankingRunner.create(config, seed=ec.random_seed), data.wire),
        "zero": lambda: rank_with_runner(zero_runner(config), data.wire),
        "popularity": lambda: rank_popularity(world, data, ec, config),
        "oracle": lambda: rank_probabilities(
            [t.probabilities for t in data.truths], data.wire, config),
    }
    results = {}
    for name in methods:
        start = time.perf_counter()
        results[name] = score_method(name, makers[name](), data)
        log(f"{name}: {time.perf_counter() - start:.1f} s")
    return results


# ----------------------------------------------------------------------------- report


def format_table(results: dict[str, MethodResult]) -> str:
    """One row per method; "gap" is the share of the random->oracle NDCG@5 gap closed."""
    has_gap = {"random", "oracle"} <= set(results)
    lines = [f"{'method':<11} {'fav AUC':>8} {'mean AUC':>9} {'NDCG@5':>8} {'NDCG@all':>9}"
             + (f" {'gap@5':>7}" if has_gap else "")]
    for r in results.values():
        line = (f"{r.name:<11} {r.auc['favorite']:>8.4f} {r.mean_auc:>9.4f} "
                f"{r.ndcg_at_5:>8.4f} {r.ndcg_all:>9.4f}")
        if has_gap:
            closed = gap_closed(r.ndcg_at_5, results["random"].ndcg_at_5,
                                results["oracle"].ndcg_at_5)
            line += f" {closed:>7.1%}"
        lines.append(line)
    return "\n".join(lines)


def format_action_table(results: dict[str, MethodResult]) -> str:
    names = list(results)
    lines = [f"{'AUC':<20}" + "".join(f"{n:>11}" for n in names)]
    for action in ACTION_NAMES:
        lines.append(f"{action:<20}" + "".join(f"{results[n].auc[action]:>11.4f}"
                                               for n in names))
    return "\n".join(lines)


def target_lines(results: dict[str, MethodResult]) -> list[str]:
    """The issue's targets for the trained model, when the needed rows were evaluated."""
    lines = []
    if "trained" in results:
        fav = results["trained"].auc["favorite"]
        lines.append(f"target favorite AUC >= 0.75: {fav:.4f} "
                     f"{'PASS' if fav >= 0.75 else 'FAIL'}")
    if {"trained", "random", "oracle"} <= set(results):
        closed = gap_closed(results["trained"].ndcg_at_5, results["random"].ndcg_at_5,
                            results["oracle"].ndcg_at_5)
        lines.append(f"target NDCG@5 closes >= 70% of the random->oracle gap: {closed:.1%} "
                     f"{'PASS' if closed >= 0.7 else 'FAIL'}")
    return lines


def to_json(checkpoint: str, trained: RankingRunner, ec: EvalConfig,
            results: dict[str, MethodResult]) -> dict[str, Any]:
    """What --json writes and --plot draws (one payload, so the picture is the numbers)."""
    closed = gap_closed(results["trained"].ndcg_at_5, results["random"].ndcg_at_5,
                        results["oracle"].ndcg_at_5)
    return {"checkpoint": str(checkpoint), "model_version": trained.model_version,
            "eval": dataclasses.asdict(ec),
            "methods": {name: r.to_json() for name, r in results.items()},
            "ndcg@5_gap_closed": closed}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = EvalConfig()
    p = argparse.ArgumentParser(prog="python -m training.evaluate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/demo.npz")
    p.add_argument("--requests", type=int, default=d.requests)
    p.add_argument("--seed", type=int, default=d.seed, help="held-out request/label draws")
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--random-seed", type=int, default=d.random_seed,
                   help="seed of the randomly initialised baseline")
    p.add_argument("--popularity-rows", type=int, default=d.popularity_rows)
    p.add_argument("--json", dest="json_out", default=None, help="also write the numbers here")
    p.add_argument("--plot", default=None,
                   help="also draw them here (a PNG: NDCG@k and AUC per method; needs the "
                        "bench extra's matplotlib)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.popularity_rows < 1:
        p.error("--requests and --popularity-rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    ec = EvalConfig(requests=args.requests, seed=args.seed, world_seed=args.world_seed,
                    random_seed=args.random_seed, popularity_rows=args.popularity_rows)
    trained = RankingRunner.from_checkpoint(args.checkpoint)
    results = evaluate(trained, ec, log=lambda line: print(line, file=sys.stderr))
    print(f"checkpoint {args.checkpoint} (model_version {trained.model_version}); "
          f"{ec.requests} held-out requests of world {ec.world_seed}, seed {ec.seed}")
    print("AUC against labels drawn from the true probabilities; NDCG gains = true expected "
          "weighted score, shifted per request to start at 0")
    print()
    print(format_table(results))
    print()
    print(format_action_table(results))
    print()
    for line in target_lines(results):
        print(line)
    payload = to_json(args.checkpoint, trained, ec, results)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(payload, indent=2) + "\n")
    if args.plot:
        from training.plots import eval_scores  # matplotlib: only where a picture is asked for

        print(f"wrote {eval_scores(payload, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
