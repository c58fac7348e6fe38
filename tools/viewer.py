"""Results viewer: `python -m tools.viewer` follows `ranking-results` (and dead letters).

Prints a legend once, then each ranked result readably (ids, final score with the raw score
and the author-diversity factor where it applied, a bar per top action, negative actions
above a threshold), or one JSON line per message with `--json`, and a summary line: results,
dead letters by code, latency p50/p99 (the request's timestamp -> the result's produced_at_ms,
so results read long after they were produced still show their real latency) and, given the
producer's `--truth` file, a rolling NDCG@5 of the served rankings against the world's true
expected scores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import textwrap
from typing import Callable

import numpy as np

from phoenix.actions import ACTION_NAMES, NEGATIVE_ACTIONS
from phoenix.scoring import ScoringConfig
from training.ranking_metrics import RollingNDCG
from training.world import RequestTruth
from tools.kafka_io import KafkaIOError, connection, read_from_start
from worker import codec
from worker.errors import ValidationError
from worker.settings import Settings, SettingsError

PROG = "python -m tools.viewer"
_BAR_WIDTH = 20
_TOP_ACTIONS = 3
NEGATIVE_THRESHOLD = 0.05  # above the demo world's base rates of the negative actions
# The worker's scoring (results carry probabilities and the final score; the contract gives
# the formula, so the raw score and the diversity factor are recomputed from them).
_SCORING = ScoringConfig()
_WEIGHTS = _SCORING.weight_vector()
# Every factor author diversity can apply: decay^k for k = 1, 2, ... down to the floor.
_FACTORS = sorted({max(_SCORING.author_diversity_decay ** k, _SCORING.author_diversity_floor)
                   for k in range(1, 64)} - {1.0})
_FACTOR_TOLERANCE = 1e-3  # float32 scores, recomputed raw scores: agree to ~1e-6 relative
_LEGEND_WIDTH = 96
_NEGATIVE = tuple(name for name in ACTION_NAMES if name in NEGATIVE_ACTIONS)


def legend(negative_threshold: float = NEGATIVE_THRESHOLD) -> str:
    """What the fields of `format_result` and `format_dead_letter` are; printed once."""
    decay, floor = _SCORING.author_diversity_decay, _SCORING.author_diversity_floor
    entries = [
        ("REQ-ID", "request id, user id, model version; wait = time in the worker's queue "
                   "before its batch; rank = that batch's model call; latency = the request's "
                   "timestamp_ms -> the result's produced_at_ms"),
        ("1. post", "place, post id, author id; score = the final score the order follows: the "
                    "weighted sum of the 19 action probabilities, negative actions counting "
                    "against it"),
        ("diversity", f"(raw R, same author xF): author diversity scaled the weighted sum R by "
                     f"F = {decay:g}^k, k = posts of the same author ranked above it by raw "
                     f"score (F never below {floor:g}); why a post can rank below one with "
                     "lower probabilities"),
        ("actions", f"the {_TOP_ACTIONS} likeliest actions with a bar (0..1); \"negative:\" "
                    f"lists {', '.join(_NEGATIVE)} when above {negative_threshold:g}"),
        ("dead", "DEAD LETTER topic[partition]@offset code at field: why the request was not "
                 "ranked and what to fix"),
    ]
    lines = ["legend:"]
    for label, text in entries:
        lines.append(textwrap.fill(text, width=_LEGEND_WIDTH, initial_indent=f"  {label:<9} ",
                                   subsequent_indent=" " * 12, break_on_hyphens=False))
    return "\n".join(lines)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 10 else f"{text[:4]}…{text[-4:]}"


def bar(probability: float, width: int = _BAR_WIDTH) -> str:
    """A fixed-width bar for a probability in [0, 1]."""
    filled = int(round(max(0.0, min(1.0, probability)) * width))
    return "█" * filled + "·" * (width - filled)


def raw_score(probabilities: dict[str, float]) -> float:
    """The weighted sum of a result's probabilities: its score before author diversity."""
    return float(np.dot([probabilities[name] for name in ACTION_NAMES], _WEIGHTS))


def diversity_factor(score: float, raw: float) -> float | None:
    """The factor author diversity scaled `raw` by to give `score` (attenuation multiplies a
    positive score and divides a negative one); None when it did not apply. Only the factors
    the worker can apply, max(decay^k, floor) for k >= 1, count: a raw score near 0 can give
    any ratio through float32 rounding."""
    if abs(raw) < 1e-6 or score == 0:
        return None
    factor = score / raw if raw > 0 else raw / score
    return factor if any(abs(factor - f) < _FACTOR_TOLERANCE for f in _FACTORS) else None


def _score_text(candidate: dict) -> str:
    score = candidate["score"]
    raw = raw_score(candidate["probabilities"])
    factor = diversity_factor(score, raw)
    text = f"score {score:+7.3f}"
    return text + (f" (raw {raw:+.3f}, same author x{factor:.2f})" if factor else "")


def _negative_text(probabilities: dict[str, float], shown: set[str], threshold: float) -> str:
    above = [f"{name} {probabilities[name]:.2f}" for name in _NEGATIVE
             if probabilities[name] > threshold and name not in shown]
    return f"  negative: {', '.join(above)}" if above else ""


def format_result(result: dict, latency_ms: float | None, top_candidates: int = 5,
                  negative_threshold: float = NEGATIVE_THRESHOLD) -> str:
    timings = result.get("timings", {})
    latency = f"  latency {latency_ms:.1f} ms" if latency_ms is not None else ""
    lines = [f"{result['request_id']}  user {_short(result['user_id'])}  "
             f"model {result['model_version']}  wait {timings.get('queue_wait_ms', 0):.1f} ms  "
             f"rank {timings.get('model_ms', 0):.1f} ms{latency}"]
    for place, candidate in enumerate(result["ranked"][:top_candidates], start=1):
        probs = candidate["probabilities"]
        top = sorted(probs.items(), key=lambda item: -item[1])[:_TOP_ACTIONS]
        actions = "  ".join(f"{name:<13} {bar(p)} {p:.2f}" for name, p in top)
        negative = _negative_text(probs, {name for name, _ in top}, negative_threshold)
        lines.append(f"  {place:>2}. post {_short(candidate['post_id']):>10}  author "
                     f"{_short(candidate['author_id']):>10}  {_score_text(candidate)}  "
                     f"{actions}{negative}")
    hidden = len(result["ranked"]) - top_candidates
    if hidden > 0:
        lines.append(f"      … {hidden} more")
    return "\n".join(lines)


def format_dead_letter(letter: dict) -> str:
    error, source = letter["error"], letter["source"]
    where = f"{source['topic']}[{source['partition']}]@{source['offset']}"
    field = f" at {error['field']}" if error.get("field") else ""
    return f"DEAD LETTER {where} {error['code']}{field}: {error['message']}"


class Summary:
    """Counts, latency percentiles and (with ground truth) rolling NDCG@5."""

    def __init__(self, truth: dict[str, RequestTruth] | None = None,
                 weights: np.ndarray | None = None):
        self.results = 0
        self.dead_letters: collections.Counter[str] = collections.Counter()
        self.latencies_ms: list[float] = []
        # Per model version (a canary, or a rollout mid-stream): results and latencies.
        self.versions: dict[str, list[float]] = collections.defaultdict(list)
        self.version_results: collections.Counter[str] = collections.Counter()
        self.truth = truth or {}
        self.weights = ScoringConfig().weight_vector() if weights is None else weights
        self.ndcg = RollingNDCG(k=5)

    def add_result(self, result: dict, latency_ms: float | None) -> None:
        self.results += 1
        version = str(result.get("model_version"))
        self.version_results[version] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
            self.versions[version].append(latency_ms)
        truth = self.truth.get(result["request_id"])
        if truth is not None:
            index = {int(p): i for i, p in enumerate(truth.candidate_post_ids.tolist())}
            order = np.array([index[c["post_id"]] for c in result["ranked"]])
            self.ndcg.add(truth.probabilities @ self.weights, order)

    def add_dead_letter(self, letter: dict) -> None:
        self.dead_letters[letter["error"]["code"]] += 1

    @property
    def total(self) -> int:
        return self.results + sum(self.dead_letters.values())

    def line(self) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.dead_letters.items()))
        parts = [f"results {self.results}",
                 f"dead letters {sum(self.dead_letters.values())}" + (f" ({codes})" if codes
                                                                      else "")]
        if self.latencies_ms:
            p50, p99 = np.percentile(self.latencies_ms, [50, 99])
            parts.append(f"latency p50 {p50:.1f} ms / p99 {p99:.1f} ms")
        if self.ndcg.count:
            parts.append(f"rolling NDCG@5 {self.ndcg.mean:.3f} over {self.ndcg.count}")
        if len(self.version_results) > 1:
            parts.append("by model: " + "; ".join(
                self._version_text(v) for v in sorted(self.version_results)))
        return "summary: " + ", ".join(parts)

    def _version_text(self, version: str) -> str:
        latencies = self.versions.get(version)
        p50 = f" p50 {np.percentile(latencies, 50):.1f} ms" if latencies else ""
        return f"{version} {self.version_results[version]} results{p50}"


def latency_of(result: dict) -> float | None:
    """The request's timestamp -> the worker producing its result (None without a request
    timestamp). Not the moment this viewer reads it: re-reading old results would count the
    time since as latency."""
    sent, produced = result.get("request_timestamp_ms"), result.get("produced_at_ms")
    return float(produced - sent) if sent and produced is not None else None


async def follow(settings: Settings, topics: list[str], on_message: Callable[[str, dict, float],
                 None], *, count: int | None = None, idle_timeout_s: float | None = None,
                 bootstrap: str | None = None) -> None:
    """Reads `topics` from the beginning (all partitions, no group, no commits) and calls
    `on_message(topic, decoded, arrival_ms)` until `count` messages or an idle timeout."""
    async for records, arrived in read_from_start(connection(bootstrap, settings), topics,
                                                  count=count, idle_timeout_s=idle_timeout_s):
        for record in records:
            try:
                message = codec.decode_message(record.value)
            except ValidationError as error:
                print(f"unreadable message on {record.topic}[{record.partition}]@"
                      f"{record.offset}: {error}", file=sys.stderr)
                continue
            on_message(record.topic, message, arrived)


def _printer(settings: Settings, summary: Summary, as_json: bool, quiet: bool,
             negative_threshold: float) -> Callable[[str, dict, float], None]:
    def on_message(topic: str, message: dict, arrived_ms: float) -> None:
        if topic == settings.dead_letter_topic:
            summary.add_dead_letter(message)
            if as_json:
                message = {**message, "original": message["original"].hex()}
            text = json.dumps(message) if as_json else format_dead_letter(message)
        else:
            latency = latency_of(message)
            summary.add_result(message, latency)
            text = json.dumps(message) if as_json else format_result(
                message, latency, negative_threshold=negative_threshold)
        if not quiet:
            print(text, flush=True)
    return on_message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], allow_abbrev=False,
        epilog="Also takes the worker's settings (topics, security) as flags or RANKER_* "
               "variables.")
    parser.add_argument("--bootstrap", help="host:port (default: the worker's RANKER_BROKER)")
    parser.add_argument("--json", action="store_true", help="one JSON line per message")
    parser.add_argument("--no-dead-letters", action="store_true", help="results only")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--idle-timeout-s", type=float, help="stop after this long idle")
    parser.add_argument("--truth", help="the producer's --truth file: show rolling NDCG@5")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary")
    parser.add_argument("--negative-threshold", type=float, default=NEGATIVE_THRESHOLD,
                        help="show a negative action's probability above this (default "
                             f"{NEGATIVE_THRESHOLD})")
    args, rest = parser.parse_known_args(argv)
    try:
        settings = Settings.load(rest, prog=PROG, tool_flags=[  # topics, security: the worker's
            option for action in parser._actions for option in action.option_strings])
    except SettingsError as error:
        print(f"results: error: {error}", file=sys.stderr)
        return 2
    truth = None
    if args.truth:
        from tools.producer import read_truth
        truth = read_truth(args.truth)
    summary = Summary(truth)
    topics = [settings.results_topic] + ([] if args.no_dead_letters
                                         else [settings.dead_letter_topic])
    on_message = _printer(settings, summary, args.json, args.summary_only,
                          args.negative_threshold)
    if not (args.json or args.summary_only):
        print(legend(args.negative_threshold), flush=True)
    try:
        asyncio.run(follow(settings, topics, on_message, count=args.count,
                           idle_timeout_s=args.idle_timeout_s, bootstrap=args.bootstrap))
    except KeyboardInterrupt:
        pass
    except KafkaIOError as error:
        print(f"results: {error}", file=sys.stderr)
        return 2
    print(summary.line(), file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
