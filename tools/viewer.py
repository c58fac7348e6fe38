"""Results viewer: `python -m tools.viewer` follows `ranking-results` (and dead letters).

Prints each ranked result readably (ids, a bar per top action, final score), or one JSON line
per message with `--json`, and a summary line: results, dead letters by code, end-to-end
latency p50/p99 (producer timestamp -> arrival here) and, given the producer's `--truth` file,
a rolling NDCG@5 of the served rankings against the world's true expected scores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
from typing import Callable

import numpy as np

from phoenix.scoring import ScoringConfig
from training.ranking_metrics import RollingNDCG
from training.world import RequestTruth
from tools.kafka_io import KafkaIOError, connection, read_from_start
from worker import codec
from worker.errors import ValidationError
from worker.settings import Settings

_BAR_WIDTH = 20
_TOP_ACTIONS = 3


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 10 else f"{text[:4]}…{text[-4:]}"


def bar(probability: float, width: int = _BAR_WIDTH) -> str:
    """A fixed-width bar for a probability in [0, 1]."""
    filled = int(round(max(0.0, min(1.0, probability)) * width))
    return "█" * filled + "·" * (width - filled)


def format_result(result: dict, latency_ms: float | None, top_candidates: int = 5) -> str:
    timings = result.get("timings", {})
    latency = f"  e2e {latency_ms:.1f} ms" if latency_ms is not None else ""
    lines = [f"{result['request_id']}  user {_short(result['user_id'])}  "
             f"model {result['model_version']}  wait {timings.get('queue_wait_ms', 0):.1f} ms  "
             f"rank {timings.get('model_ms', 0):.1f} ms{latency}"]
    for place, candidate in enumerate(result["ranked"][:top_candidates], start=1):
        probs = candidate["probabilities"]
        top = sorted(probs.items(), key=lambda item: -item[1])[:_TOP_ACTIONS]
        actions = "  ".join(f"{name:<13} {bar(p)} {p:.2f}" for name, p in top)
        lines.append(f"  {place:>2}. post {_short(candidate['post_id']):>10}  author "
                     f"{_short(candidate['author_id']):>10}  score {candidate['score']:+7.3f}  "
                     f"{actions}")
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
        self.truth = truth or {}
        self.weights = ScoringConfig().weight_vector() if weights is None else weights
        self.ndcg = RollingNDCG(k=5)

    def add_result(self, result: dict, latency_ms: float | None) -> None:
        self.results += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
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
        return "summary: " + ", ".join(parts)


def latency_of(result: dict, arrived_ms: float) -> float | None:
    sent = result.get("request_timestamp_ms")
    return arrived_ms - sent if sent else None


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


def _printer(settings: Settings, summary: Summary, as_json: bool,
             quiet: bool) -> Callable[[str, dict, float], None]:
    def on_message(topic: str, message: dict, arrived_ms: float) -> None:
        if topic == settings.dead_letter_topic:
            summary.add_dead_letter(message)
            if as_json:
                message = {**message, "original": message["original"].hex()}
            text = json.dumps(message) if as_json else format_dead_letter(message)
        else:
            latency = latency_of(message, arrived_ms)
            summary.add_result(message, latency)
            text = json.dumps(message) if as_json else format_result(message, latency)
        if not quiet:
            print(text, flush=True)
    return on_message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="host:port (default: the worker's RANKER_BROKER)")
    parser.add_argument("--json", action="store_true", help="one JSON line per message")
    parser.add_argument("--no-dead-letters", action="store_true", help="results only")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--idle-timeout-s", type=float, help="stop after this long idle")
    parser.add_argument("--truth", help="the producer's --truth file: show rolling NDCG@5")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary")
    args, rest = parser.parse_known_args(argv)
    settings = Settings.load(rest)
    truth = None
    if args.truth:
        from tools.producer import read_truth
        truth = read_truth(args.truth)
    summary = Summary(truth)
    topics = [settings.results_topic] + ([] if args.no_dead_letters
                                         else [settings.dead_letter_topic])
    on_message = _printer(settings, summary, args.json, args.summary_only)
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
