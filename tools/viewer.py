"""Results viewer: `python -m tools.viewer` follows `ranking-results` (and dead letters).

Prints a legend once, then each ranked result readably (ids, final score with the raw score
and the author-diversity factor where it applied, a bar per top action, negative actions
above a threshold), or one JSON line per message with `--json`, and a summary line: results,
dead letters by code, latency p50/p99 (the request's timestamp -> the result's produced_at_ms,
so results read long after they were produced still show their real latency) and, given the
producer's `--truth` file, a rolling NDCG@5 of the served rankings against the world's true
expected scores.

`--live` prints no messages: it redraws one screen every `--refresh-s` (in place on a terminal,
one frame after another after a form feed elsewhere) with the rates, latency percentiles, dead
letters by code and model versions of the last `--window-s` seconds and of everything read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import sys
import textwrap
import time
from collections.abc import Awaitable, Sequence
from typing import Callable, TextIO

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
        self.count_result(str(result.get("model_version")), latency_ms)
        truth = self.truth.get(result["request_id"])
        if truth is not None:
            index = {int(p): i for i, p in enumerate(truth.candidate_post_ids.tolist())}
            order = np.array([index[c["post_id"]] for c in result["ranked"]])
            self.ndcg.add(truth.probabilities @ self.weights, order)

    def count_result(self, version: str, latency_ms: float | None) -> None:
        """Counts a result from what the counts keep of it (the live window replays these)."""
        self.results += 1
        self.version_results[version] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
            self.versions[version].append(latency_ms)

    def add_dead_letter(self, letter: dict) -> None:
        self.count_dead_letter(letter["error"]["code"])

    def count_dead_letter(self, code: str) -> None:
        self.dead_letters[code] += 1

    def percentile(self, q: float, version: str | None = None) -> float | None:
        """The q-th latency percentile, of all results or of one model version's; None
        without latencies."""
        values = self.latencies_ms if version is None else self.versions.get(version)
        return float(np.percentile(values, q)) if values else None

    @property
    def dead_letter_count(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def total(self) -> int:
        return self.results + self.dead_letter_count

    def line(self) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.dead_letters.items()))
        parts = [f"results {self.results}",
                 f"dead letters {self.dead_letter_count}" + (f" ({codes})" if codes else "")]
        if self.latencies_ms:
            parts.append(f"latency p50 {self.percentile(50):.1f} ms / p99 "
                         f"{self.percentile(99):.1f} ms")
        if self.ndcg.count:
            parts.append(f"rolling NDCG@5 {self.ndcg.mean:.3f} over {self.ndcg.count}")
        if len(self.version_results) > 1:
            parts.append("by model: " + "; ".join(
                self._version_text(v) for v in sorted(self.version_results)))
        return "summary: " + ", ".join(parts)

    def _version_text(self, version: str) -> str:
        p50 = self.percentile(50, version)
        p50_text = f" p50 {p50:.1f} ms" if p50 is not None else ""
        return f"{version} {self.version_results[version]} results{p50_text}"


def latency_of(result: dict) -> float | None:
    """The request's timestamp -> the worker producing its result (None without a request
    timestamp). Not the moment this viewer reads it: re-reading old results would count the
    time since as latency."""
    sent, produced = result.get("request_timestamp_ms"), result.get("produced_at_ms")
    return float(produced - sent) if sent and produced is not None else None


# -- live: one screen redrawn in place ---------------------------------------------------------

SCREEN_LINES, SCREEN_COLUMNS = 24, 100  # what a live frame fits in
_LABEL_WIDTH = 32  # room for a model version name
_CELL_WIDTHS = (10, 9, 10)  # count, rate or share, p50: once for the window, once for the total
_LIST_LINES = 6  # dead-letter codes (all 6) and model versions, each: a frame of 22 lines
_MIN_SPAN_S = 1.0  # a rate over less than a second of reading (the first frame) is noise


def now_ms() -> float:
    """The clock the live window runs on: the one `read_from_start` stamps arrivals with."""
    return time.time() * 1000.0


@dataclasses.dataclass(frozen=True)
class Arrival:
    """What the live window keeps of a message: when it arrived and what it counts as."""

    at_ms: float
    code: str | None = None  # a dead letter's code; None for a result
    version: str = ""  # a result's model version
    latency_ms: float | None = None


class LiveStats:
    """Everything read (a `Summary`) plus the arrivals of the last `window_s`, added in the
    order they arrive. Time comes in as `now`, never from a clock, so the window can be
    tested without waiting."""

    def __init__(self, started_ms: float, window_s: float = 10.0,
                 truth: dict[str, RequestTruth] | None = None):
        self.started_ms, self.window_s = started_ms, window_s
        self.summary = Summary(truth)
        self._recent: collections.deque[Arrival] = collections.deque()

    def add_result(self, result: dict, latency_ms: float | None, arrived_ms: float) -> None:
        self.summary.add_result(result, latency_ms)
        self._recent.append(Arrival(arrived_ms, version=str(result.get("model_version")),
                                    latency_ms=latency_ms))

    def add_dead_letter(self, letter: dict, arrived_ms: float) -> None:
        self.summary.add_dead_letter(letter)
        self._recent.append(Arrival(arrived_ms, code=letter["error"]["code"]))

    def elapsed_s(self, now: float) -> float:
        return max(0.0, (now - self.started_ms) / 1000.0)

    def span_s(self, now: float) -> float:
        """The seconds the window's rates are over: the window, or the time read so far
        while that is shorter (the first frames would otherwise understate the rates)."""
        return max(_MIN_SPAN_S, min(self.window_s, self.elapsed_s(now)))

    def window(self, now: float) -> Summary:
        """The counts of the arrivals in (now - window_s, now]; older ones are dropped."""
        while self._recent and self._recent[0].at_ms <= now - self.window_s * 1000.0:
            self._recent.popleft()
        counts = Summary()
        for arrival in self._recent:
            if arrival.code is None:
                counts.count_result(arrival.version, arrival.latency_ms)
            else:
                counts.count_dead_letter(arrival.code)
        return counts

    def rates(self, now: float) -> tuple[float, float]:
        """Results/s and dead letters/s over the window."""
        return per_second(self.window(now), self.span_s(now))


def per_second(counts: Summary, span_s: float) -> tuple[float, float]:
    """Results/s and dead letters/s of `counts` read over `span_s`."""
    return counts.results / span_s, counts.dead_letter_count / span_s


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _row(label: str, window: Sequence[object] = (), total: Sequence[object] = ()) -> str:
    """One line of the frame's grid: a label, then (count, rate or share, p50) for the window
    and for everything read; missing cells are blank."""
    def cells(values: Sequence[object]) -> str:
        padded = [*values, *[""] * (len(_CELL_WIDTHS) - len(values))]
        return "".join(f"{str(v):>{w}}" for v, w in zip(padded, _CELL_WIDTHS))
    return (f"{_clip(label, _LABEL_WIDTH - 1):<{_LABEL_WIDTH}}{cells(window)}"
            f"{cells(total)}").rstrip()


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "-"


def _limited(lines: list[str], limit: int) -> list[str]:
    """At most `limit` lines, the last saying how many were left out."""
    if len(lines) <= limit:
        return lines
    return lines[:limit - 1] + [f"  … {len(lines) - limit + 1} more"]


def _code_rows(window: Summary, total: Summary) -> list[str]:
    codes = sorted(total.dead_letters, key=lambda c: (-total.dead_letters[c], c))
    return [_row(f"  {code}", (window.dead_letters[code],), (total.dead_letters[code],))
            for code in codes]


def _version_cells(counts: Summary, version: str) -> tuple[object, ...]:
    results = counts.version_results[version]
    share = f"{100.0 * results / counts.results:.1f}%" if counts.results else "-"
    return results, share, _ms(counts.percentile(50, version))


def _version_rows(window: Summary, total: Summary) -> list[str]:
    versions = sorted(total.version_results, key=lambda v: (-total.version_results[v], v))
    return [_row(f"  {v}", _version_cells(window, v), _version_cells(total, v))
            for v in versions]


def render(stats: LiveStats, now: float) -> str:
    """One frame (at most SCREEN_LINES x SCREEN_COLUMNS): the window and the totals."""
    window, total = stats.window(now), stats.summary
    results_rate, dead_rate = per_second(window, stats.span_s(now))
    last = f"last {stats.window_s:g} s"
    ndcg = (f"  rolling NDCG@5 {total.ndcg.mean:.3f} over {total.ndcg.count}"
            if total.ndcg.count else "")
    lines = [
        f"results viewer, live: elapsed {stats.elapsed_s(now):.1f} s, window {stats.window_s:g} "
        f"s{ndcg}",
        _row("", (last, "rate"), ("total",)),
        _row("results", (window.results, f"{results_rate:.1f}/s"), (total.results,)),
        _row("dead letters", (window.dead_letter_count, f"{dead_rate:.1f}/s"),
             (total.dead_letter_count,)),
        _row("latency p50", ("", "", _ms(window.percentile(50))),
             ("", "", _ms(total.percentile(50)))),
        _row("latency p99", ("", "", _ms(window.percentile(99))),
             ("", "", _ms(total.percentile(99)))),
        "",
        _row("dead letters by code", (last,), ("total",)),
        *_limited(_code_rows(window, total), _LIST_LINES),
        "",
        _row("model versions", (last, "share", "p50"), ("total", "share", "p50")),
        *_limited(_version_rows(window, total), _LIST_LINES),
    ]
    return "\n".join(_clip(line, SCREEN_COLUMNS) for line in lines[:SCREEN_LINES])


class Screen:
    """Where live frames go: redrawn in place on a terminal (cursor home, clear to the end);
    elsewhere (a pipe, a file, a test) one after another, each after a form feed line, so
    the output stays readable and splits into frames."""

    CLEAR = "\x1b[H\x1b[J"

    def __init__(self, stream: TextIO, in_place: bool | None = None):
        self.stream = stream
        self.in_place = stream.isatty() if in_place is None else in_place

    def draw(self, frame: str) -> None:
        self.stream.write((self.CLEAR if self.in_place else "\f\n") + frame + "\n")
        self.stream.flush()


def drawer(stats: LiveStats, screen: Screen) -> Callable[[], None]:
    """Draws the frame of now."""
    return lambda: screen.draw(render(stats, now_ms()))


async def redrawing(following: Awaitable[None], draw: Callable[[], None],
                    refresh_s: float) -> None:
    """Awaits `following` while calling `draw` every `refresh_s`, messages or not: a quiet
    stream must still show its rates falling to 0."""
    async def redraw_forever() -> None:
        while True:
            await asyncio.sleep(refresh_s)
            draw()

    redraws = asyncio.create_task(redraw_forever())
    try:
        await following
    finally:
        redraws.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await redraws


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


def _route(settings: Settings, on_result: Callable[[dict, float | None, float], None],
           on_dead_letter: Callable[[dict, float], None]) -> Callable[[str, dict, float], None]:
    """An `on_message` for `follow`: dead letters to `on_dead_letter(letter, arrived_ms)`,
    results to `on_result(result, latency_ms, arrived_ms)`."""
    def on_message(topic: str, message: dict, arrived_ms: float) -> None:
        if topic == settings.dead_letter_topic:
            on_dead_letter(message, arrived_ms)
        else:
            on_result(message, latency_of(message), arrived_ms)
    return on_message


def _printer(settings: Settings, summary: Summary, as_json: bool, quiet: bool,
             negative_threshold: float) -> Callable[[str, dict, float], None]:
    def show(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    def on_dead_letter(letter: dict, _arrived_ms: float) -> None:
        summary.add_dead_letter(letter)
        show(json.dumps({**letter, "original": letter["original"].hex()}) if as_json
             else format_dead_letter(letter))

    def on_result(result: dict, latency: float | None, _arrived_ms: float) -> None:
        summary.add_result(result, latency)
        show(json.dumps(result) if as_json else format_result(
            result, latency, negative_threshold=negative_threshold))
    return _route(settings, on_result, on_dead_letter)


def _flag_error(args: argparse.Namespace) -> str | None:
    """Why the viewer's own flags cannot go together, or None."""
    if args.live and (args.json or args.summary_only):
        return "--live draws its own screen; drop --json and --summary-only"
    for flag, value in (("--refresh-s", args.refresh_s), ("--window-s", args.window_s)):
        if not value > 0:
            return f"{flag} must be > 0, got {value:g}"
    return None


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
    parser.add_argument("--live", action="store_true",
                        help="no messages: one screen of rates, latency, dead letters by code "
                             "and model versions, redrawn in place")
    parser.add_argument("--refresh-s", type=float, default=1.0,
                        help="--live: redraw this often (default 1.0)")
    parser.add_argument("--window-s", type=float, default=10.0,
                        help="--live: rates and window percentiles over the last this many "
                             "seconds (default 10)")
    args, rest = parser.parse_known_args(argv)
    try:
        settings = Settings.load(rest, prog=PROG, tool_flags=[  # topics, security: the worker's
            option for action in parser._actions for option in action.option_strings])
    except SettingsError as error:
        print(f"results: error: {error}", file=sys.stderr)
        return 2
    if (flag_error := _flag_error(args)) is not None:
        print(f"results: error: {flag_error}", file=sys.stderr)
        return 2
    truth = None
    if args.truth:
        from tools.producer import read_truth
        truth = read_truth(args.truth)
    topics = [settings.results_topic] + ([] if args.no_dead_letters
                                         else [settings.dead_letter_topic])
    draw: Callable[[], None] | None = None
    if args.live:
        live = LiveStats(now_ms(), args.window_s, truth)
        summary, draw = live.summary, drawer(live, Screen(sys.stdout))
        on_message = _route(settings, live.add_result, live.add_dead_letter)
    else:
        summary = Summary(truth)
        on_message = _printer(settings, summary, args.json, args.summary_only,
                              args.negative_threshold)
        if not (args.json or args.summary_only):
            print(legend(args.negative_threshold), flush=True)
    following = follow(settings, topics, on_message, count=args.count,
                       idle_timeout_s=args.idle_timeout_s, bootstrap=args.bootstrap)
    try:
        asyncio.run(following if draw is None else redrawing(following, draw, args.refresh_s))
    except KeyboardInterrupt:
        pass
    except KafkaIOError as error:
        print(f"results: {error}", file=sys.stderr)
        return 2
    if draw is not None:
        draw()  # the last frame: everything read, whatever ended the reading
    print(summary.line(), file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
