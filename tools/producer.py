"""Mock producer: ranking requests drawn from the synthetic world (or random), to Kafka or a file.

    python -m tools.producer --count 1000 --rate 200 --seed 7 --bad-fraction 0.05 \
        [--source world|random] [--truth truth.jsonl] [--out requests.rec] \
        [--bootstrap 127.0.0.1:9092] [--topic ranking-requests] [--candidates N|MIN:MAX] \
        [--deadline-ms N]

Generation is pure and separate from sending: `generate_events(seed, count, ...)` yields
`Event`s, the same ones for the same arguments (prefix-stable: the first n events do not depend
on `count`). Each request gets `timestamp_ms` when it is sent, so only that field differs
between two runs with the same seed; `--fixed-timestamp-ms` pins it for byte-identical output.

Sources:
  world   requests from `training.world` (default): known true probabilities per candidate,
          written to `--truth` as JSON lines (`world-truth.v1`), never to the request topic.
  random  the reference's `create_example_batch` style: random u64 ids, history lengths
          uniform in [S/2, S], each action set with probability 0.3, random surfaces,
          C candidates. No ground truth.

The `--truth` file has one JSON line per valid world request, never one for a malformed event:
  {"schema": "world-truth.v1", "request_id": str, "user_id": int,
   "candidates": [{"post_id": int, "relevant": bool,
                   "probabilities": [19 floats, in phoenix.actions.ACTION_NAMES order]}, ...]}
`read_truth(path)` loads it as {request_id: RequestTruth}.

`--candidates N` gives every request N candidates, `MIN:MAX` a count drawn uniformly per
request (up to the wire contract's 1024); by default C = 8, as the demo model was trained.

`--bad-fraction` replaces that share of events by malformed ones, cycling through
`BAD_EVENT_KINDS` (kind -> the dead-letter code the worker must give it).

`--deadline-ms N` makes each valid request due N ms after it is sent: it carries
`deadline_ms = timestamp_ms + N`, which the worker honours (an answer it cannot give in time is
dead-lettered `expired`, unranked).

`--server-history` keeps histories on the worker: each valid request's history goes first, item
by item and oldest first, as engagement.v1 messages (keyed by user) to `--engagements-topic`,
then the request itself as a ranking-request.v2 without history, which the worker ranks with
the history it built from those engagements. With `--out`, engagements go to
`--engagements-out` (for `replay offline --engagements`). Malformed events stay v1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

import msgpack
import numpy as np
from tqdm import tqdm

from phoenix.actions import ACTION_NAMES, NUM_ACTIONS
from training.world import RequestTruth, World, WorldConfig
from worker.codec import encode_request, user_key
from worker.errors import EXPIRED, INVALID, NOT_MSGPACK, TOO_LARGE, WorkerError
from tools.pacing import Pace
from tools.recordfile import Record, RecordWriter
from worker.settings import SettingsError
from worker.topics import ENGAGEMENTS_TOPIC, REQUESTS_TOPIC
from worker.wire import DEFAULT_LIMITS, ENGAGEMENT_SCHEMA, REQUEST_SCHEMA, REQUEST_SCHEMA_V2

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
VALID = "valid"  # Event.kind of a well-formed request
SOURCES = ("world", "random")
RANDOM_ACTION_RATE = 0.3  # share of actions set per history item in `--source random`
# Over the worker's default byte cap. Kafka's default limits are about 1 MiB too, so a broker
# must allow larger messages for this kind to reach the worker (see `--too-large-bytes`).
DEFAULT_TOO_LARGE_BYTES = DEFAULT_LIMITS.max_message_bytes + 1024
_CHUNK = 64  # requests drawn per numpy call; fixed so that events do not depend on `count`

# Every kind of malformed event the producer can emit, and the dead-letter code it must get.
BAD_EVENT_KINDS: dict[str, str] = {
    "not_msgpack": NOT_MSGPACK,  # a byte that starts no msgpack type, then text
    "truncated_msgpack": NOT_MSGPACK,  # a valid request cut in the middle
    "trailing_bytes": NOT_MSGPACK,  # a valid request followed by junk
    "too_large": TOO_LARGE,  # a well-formed request over the byte cap (huge history)
    "not_a_map": INVALID,  # valid msgpack, but an array at the top
    "duplicate_key": INVALID,  # the top-level map carries "user_id" twice
    "wrong_schema": INVALID,  # schema id of a version this worker does not read
    "missing_field": INVALID,  # "user_id" left out
    "missing_nested_field": INVALID,  # a candidate without "author_id"
    "unknown_key": INVALID,  # a typo'd extra top-level key ("userid")
    "wrong_type": INVALID,  # user_id sent as a decimal string
    "bool_id": INVALID,  # user_id sent as true (booleans are not integers)
    "empty_request_id": INVALID,  # request_id ""
    "unknown_action": INVALID,  # "favourite" (misspelt) in a history item
    "duplicate_action": INVALID,  # the same action twice in one history item
    "zero_id": INVALID,  # a candidate post id 0
    "negative_id": INVALID,  # a candidate author id -1 (a signed-long producer bug)
    "id_too_large": INVALID,  # user id 2**64 as a float (msgpack ints stop at 2**64-1)
    "negative_surface": INVALID,  # candidate surface -1
    "surface_out_of_vocab": INVALID,  # candidate surface V
    "empty_candidates": INVALID,  # "candidates": []
    "duplicate_candidates": INVALID,  # two candidates with the same post id
    "nan_int": INVALID,  # NaN where an int is expected (a candidate surface)
    "bad_top_k": INVALID,  # top_k 0
    "expired": EXPIRED,  # deadline_ms in 1970
}


class ProducerError(WorkerError, ValueError):
    """Arguments the producer cannot honour."""


@dataclasses.dataclass(frozen=True, eq=False)
class Event:
    """One message to send. `encode` adds the send-time `timestamp_ms` to map requests."""

    index: int  # position in the stream
    kind: str  # VALID or a key of BAD_EVENT_KINDS
    key: bytes  # Kafka key: the (original) user id, 8 bytes big-endian
    request_id: str  # the id the request was built with (may be broken by the bad kind)
    truth: RequestTruth | None  # hidden ground truth (valid world events only)
    request: dict[str, Any] | None = None  # the map to encode, without timestamp_ms
    raw: bytes | None = None  # final bytes, for kinds that are not an encodable request map
    engagement: bool = False  # an engagement.v1 map (`--server-history`), not a request
    time_offset_ms: int = 0  # encoded with timestamp_ms = send time - this
    # A request due this many ms after it is sent: encoded with deadline_ms = send time + this
    # (only with a send time: a deadline is relative to when the request leaves).
    deadline_after_ms: int | None = None

    @property
    def expected_code(self) -> str | None:
        """The dead-letter code the worker must give this event; None for a valid one."""
        return None if self.kind == VALID else BAD_EVENT_KINDS[self.kind]

    def encode(self, timestamp_ms: int | None = None) -> bytes:
        """The message value; `timestamp_ms` (epoch ms) is added to map requests when given,
        and with it a request's `deadline_ms` when it has `deadline_after_ms`."""
        if self.raw is not None:
            return self.raw
        if self.request is None:
            raise ProducerError(f"event {self.index} has neither a request nor raw bytes")
        if timestamp_ms is None:
            return encode_request(self.request)
        stamped = {**self.request, "timestamp_ms": int(timestamp_ms) - self.time_offset_ms}
        if self.deadline_after_ms is not None and not self.engagement:
            stamped["deadline_ms"] = int(timestamp_ms) + self.deadline_after_ms
        return encode_request(stamped)


# ----------------------------------------------------------------------------- valid requests


def _random_requests(rng: np.random.Generator, request_ids: list[str],
                     config: WorldConfig) -> list[tuple[dict[str, Any], None]]:
    """`create_example_batch`-style requests: random ids, actions set with probability 0.3."""
    n, s, c, v = len(request_ids), config.history_len, config.num_candidates, config.num_surfaces
    u64 = dict(dtype=np.uint64, endpoint=True)
    users = rng.integers(1, 2**64 - 1, size=n, **u64).tolist()  # [n]
    lengths = rng.integers(s // 2, s + 1, size=n).tolist()  # [n] in [S/2, S]
    h_posts = rng.integers(1, 2**64 - 1, size=(n, s), **u64).tolist()  # [n, S]
    h_authors = rng.integers(1, 2**64 - 1, size=(n, s), **u64).tolist()  # [n, S]
    h_actions = rng.random((n, s, NUM_ACTIONS)) < RANDOM_ACTION_RATE  # [n, S, A]
    h_surfaces = rng.integers(0, v, size=(n, s)).tolist()  # [n, S]
    # 64-bit random post ids collide with probability ~C^2 / 2^65: never in practice.
    c_posts = rng.integers(1, 2**64 - 1, size=(n, c), **u64).tolist()  # [n, C]
    c_authors = rng.integers(1, 2**64 - 1, size=(n, c), **u64).tolist()  # [n, C]
    c_surfaces = rng.integers(0, v, size=(n, c)).tolist()  # [n, C]
    out = []
    for i, request_id in enumerate(request_ids):
        history = [{"post_id": h_posts[i][j], "author_id": h_authors[i][j],
                    "actions": [ACTION_NAMES[a] for a in np.flatnonzero(h_actions[i, j])],
                    "surface": h_surfaces[i][j]} for j in range(lengths[i])]
        candidates = [{"post_id": c_posts[i][j], "author_id": c_authors[i][j],
                       "surface": c_surfaces[i][j]} for j in range(c)]
        out.append(({"schema": REQUEST_SCHEMA, "request_id": request_id, "user_id": users[i],
                     "history": history, "candidates": candidates}, None))
    return out


# ----------------------------------------------------------------------------- bad events

_Mutation = Callable[[dict[str, Any], "_BadContext"], "dict[str, Any] | bytes"]


@dataclasses.dataclass(frozen=True)
class _BadContext:
    num_surfaces: int
    too_large_bytes: int


def _with(request: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**request, **changes}


def _candidate_change(request: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    candidates = [dict(c) for c in request["candidates"]]
    candidates[index].update(changes)
    return _with(request, candidates=candidates)


def _last_history_actions(request: dict[str, Any], actions: list[str]) -> dict[str, Any]:
    history = [dict(h) for h in request["history"]]
    if not history:  # world and random histories are never empty; keep the kind meaningful
        first = request["candidates"][0]
        history = [{"post_id": first["post_id"], "author_id": first["author_id"], "surface": 0}]
    history[-1]["actions"] = actions
    return _with(request, history=history)


def _too_large(request: dict[str, Any], ctx: _BadContext) -> dict[str, Any]:
    item = request["history"][-1]
    item_bytes = len(msgpack.packb(item, use_bin_type=True))
    base = len(encode_request(request))
    repeats = math.ceil(max(ctx.too_large_bytes - base, 0) / item_bytes) + 1
    return _with(request, history=request["history"] + [item] * repeats)


def _duplicate_key(request: dict[str, Any], ctx: _BadContext) -> bytes:
    # msgpack libraries refuse to build such a map, so write the header and pairs by hand.
    items = list(request.items()) + [("user_id", request["user_id"] ^ 1)]
    if len(items) > 15:
        raise ProducerError("duplicate_key assumes a fixmap (<= 15 keys)")
    body = b"".join(msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True)
                    for k, v in items)
    return bytes([0x80 | len(items)]) + body


_MUTATIONS: dict[str, _Mutation] = {
    "not_msgpack": lambda r, ctx: b"\xc1not msgpack: " + r["request_id"].encode(),
    "truncated_msgpack": lambda r, ctx: (lambda b: b[: len(b) // 2])(encode_request(r)),
    "trailing_bytes": lambda r, ctx: encode_request(r) + b"\x00junk",
    "too_large": _too_large,
    "not_a_map": lambda r, ctx: msgpack.packb([r["request_id"], r["user_id"]],
                                              use_bin_type=True),
    "duplicate_key": _duplicate_key,
    "wrong_schema": lambda r, ctx: _with(r, schema="ranking-request.v9"),
    "missing_field": lambda r, ctx: {k: v for k, v in r.items() if k != "user_id"},
    "missing_nested_field": lambda r, ctx: _with(r, candidates=[
        {k: v for k, v in c.items() if not (i == 0 and k == "author_id")}
        for i, c in enumerate(r["candidates"])]),
    "unknown_key": lambda r, ctx: _with(r, userid=r["user_id"]),
    "wrong_type": lambda r, ctx: _with(r, user_id=str(r["user_id"])),
    "bool_id": lambda r, ctx: _with(r, user_id=True),
    "empty_request_id": lambda r, ctx: _with(r, request_id=""),
    "unknown_action": lambda r, ctx: _last_history_actions(r, ["favourite"]),
    "duplicate_action": lambda r, ctx: _last_history_actions(r, ["favorite", "favorite"]),
    "zero_id": lambda r, ctx: _candidate_change(r, 0, post_id=0),
    "negative_id": lambda r, ctx: _candidate_change(r, 0, author_id=-1),
    "id_too_large": lambda r, ctx: _with(r, user_id=float(2**64)),
    "negative_surface": lambda r, ctx: _candidate_change(r, 0, surface=-1),
    "surface_out_of_vocab": lambda r, ctx: _candidate_change(r, 0, surface=ctx.num_surfaces),
    "empty_candidates": lambda r, ctx: _with(r, candidates=[]),
    "duplicate_candidates": lambda r, ctx: _candidate_change(
        r, 1, post_id=r["candidates"][0]["post_id"]),
    "nan_int": lambda r, ctx: _candidate_change(r, 0, surface=float("nan")),
    "bad_top_k": lambda r, ctx: _with(r, top_k=0),
    "expired": lambda r, ctx: _with(r, deadline_ms=1),
}
if set(_MUTATIONS) != set(BAD_EVENT_KINDS):  # import-time guard: catalogue and code agree
    raise ImportError(f"_MUTATIONS and BAD_EVENT_KINDS differ by "
                      f"{sorted(set(_MUTATIONS) ^ set(BAD_EVENT_KINDS))}")


# ----------------------------------------------------------------------------- generation


def parse_candidates(text: str) -> tuple[int, int]:
    """"N" or "MIN:MAX" -> (MIN, MAX): candidates per request, within the wire contract."""
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise ProducerError(f"candidates must be N or MIN:MAX, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1] <= DEFAULT_LIMITS.max_candidates:
        raise ProducerError(f"candidates must satisfy 1 <= MIN <= MAX <= "
                            f"{DEFAULT_LIMITS.max_candidates}, got {text!r}")
    return bounds


def _cut_candidates(request: dict[str, Any], truth: RequestTruth | None,
                    keep: int) -> tuple[dict[str, Any], RequestTruth | None]:
    """The request's first `keep` candidates (their order is random) and the same truth."""
    request = _with(request, candidates=request["candidates"][:keep])
    if truth is not None:
        truth = dataclasses.replace(truth, candidate_post_ids=truth.candidate_post_ids[:keep],
                                    probabilities=truth.probabilities[:keep],
                                    relevant=truth.relevant[:keep])
    return request, truth


def generate_events(seed: int, count: int, *, source: str = "world", bad_fraction: float = 0.0,
                    world_config: WorldConfig = WorldConfig(),
                    bad_kinds: Sequence[str] | None = None,
                    too_large_bytes: int = DEFAULT_TOO_LARGE_BYTES,
                    candidates: tuple[int, int] | None = None,
                    deadline_after_ms: int | None = None) -> Iterator[Event]:
    """The event stream for `seed`: pure, deterministic, prefix-stable.

    Each event is malformed with probability `bad_fraction`; malformed events cycle through
    `bad_kinds` (default: every kind of `BAD_EVENT_KINDS`) in a seed-shuffled order, so
    count * bad_fraction >= len(kinds) covers every kind. World requests come from the world
    of `world_config` (its seed, not `seed`, fixes users and posts: use the world the model was
    trained on); `seed` fixes which users, posts and actions are drawn. `candidates`
    (MIN, MAX) draws each request's candidate count uniformly (malformed events keep at
    least 2); None keeps `world_config.num_candidates`, the same events as before it existed.
    `deadline_after_ms` makes each valid request due that long after it is sent (see
    `Event.deadline_after_ms`); malformed events keep what their kind gives them.
    """
    if source not in SOURCES:
        raise ProducerError(f"source must be one of {SOURCES}, got {source!r}")
    if not 0.0 <= bad_fraction <= 1.0:
        raise ProducerError(f"bad_fraction must be in [0, 1], got {bad_fraction!r}")
    if count < 0:
        raise ProducerError(f"count must be >= 0, got {count!r}")
    if deadline_after_ms is not None and deadline_after_ms < 0:
        raise ProducerError(f"deadline_after_ms must be >= 0, got {deadline_after_ms!r}")
    kinds = list(BAD_EVENT_KINDS) if bad_kinds is None else list(bad_kinds)
    unknown = [k for k in kinds if k not in BAD_EVENT_KINDS]
    if unknown or (bad_fraction > 0 and not kinds):
        raise ProducerError(f"bad_kinds must be a non-empty subset of {list(BAD_EVENT_KINDS)}; "
                            f"unknown: {unknown}")
    if candidates is not None:
        low, high = parse_candidates(f"{candidates[0]}:{candidates[1]}")
        world_config = dataclasses.replace(
            world_config, num_candidates=max(high, 2),
            candidate_pool=max(world_config.candidate_pool, 4 * high))
    if world_config.num_candidates < 2:
        raise ProducerError("the producer needs num_candidates >= 2 (duplicate_candidates)")
    counts_rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    ctx = _BadContext(num_surfaces=world_config.num_surfaces, too_large_bytes=too_large_bytes)
    requests_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    bad_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    kinds = [kinds[i] for i in bad_rng.permutation(len(kinds))] if kinds else kinds
    world = World.create(world_config) if source == "world" else None

    index = 0
    bad_count = 0
    while index < count:
        ids = [f"s{seed}-{index + i:06d}" for i in range(_CHUNK)]
        if world is not None:
            chunk: list[tuple[dict[str, Any], RequestTruth | None]] = list(
                world.sample_requests(requests_rng, ids))
        else:
            chunk = list(_random_requests(requests_rng, ids, world_config))
        for request, truth in chunk:
            if index >= count:
                return
            key = user_key(request["user_id"])
            is_valid = bad_rng.random() >= bad_fraction
            if candidates is not None:
                keep = int(counts_rng.integers(low, high + 1))
                request, truth = _cut_candidates(request, truth, keep if is_valid else
                                                 max(keep, 2))
            if is_valid:
                yield Event(index=index, kind=VALID, key=key, request_id=request["request_id"],
                            truth=truth, request=request, deadline_after_ms=deadline_after_ms)
            else:
                kind = kinds[bad_count % len(kinds)]
                bad_count += 1
                request_id = f"{request['request_id']}~{kind}"  # dead letters name their kind
                broken = _MUTATIONS[kind](_with(request, request_id=request_id), ctx)
                yield Event(index=index, kind=kind, key=key, request_id=request_id, truth=None,
                            request=broken if isinstance(broken, dict) else None,
                            raw=broken if isinstance(broken, bytes) else None)
            index += 1


def with_server_history(events: Iterable[Event]) -> Iterator[Event]:
    """Each valid request's history as engagement events (oldest first), then the request as
    ranking-request.v2 without history; malformed events unchanged. Item j of n is stamped
    n - j ms before its send time: distinct times in history order, all before the request
    (a burst sent within one millisecond would otherwise share a time, and a post repeated in
    the history would count as a duplicate)."""
    for event in events:
        if event.kind != VALID:
            yield event
            continue
        request = dict(event.request)
        items = request.pop("history")
        for j, item in enumerate(items):
            yield dataclasses.replace(event, truth=None, engagement=True,
                                      time_offset_ms=len(items) - j, request={
                                          "schema": ENGAGEMENT_SCHEMA,
                                          "user_id": request["user_id"], **item})
        yield dataclasses.replace(event, request={**request, "schema": REQUEST_SCHEMA_V2})


# ----------------------------------------------------------------------------- sending


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_truth(out: IO[str], truth: RequestTruth) -> None:
    """One JSON line per request (`world-truth.v1`, probabilities in ACTION_NAMES order)."""
    out.write(json.dumps(truth.to_json(), separators=(",", ":")) + "\n")


def read_truth(path: str | os.PathLike[str]) -> dict[str, RequestTruth]:
    """The `--truth` side file as {request_id: RequestTruth}."""
    truths: dict[str, RequestTruth] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                truth = RequestTruth.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as error:
                raise ProducerError(f"{path}:{number}: not a world-truth.v1 line ({error}); "
                                    "pass the file written by the producer's --truth") from error
            truths[truth.request_id] = truth
    return truths


def _stamp(fixed_timestamp_ms: int | None) -> int:
    return now_ms() if fixed_timestamp_ms is None else fixed_timestamp_ms


def write_events_to_file(events: Iterable[Event], path: str | os.PathLike[str], *,
                         topic: str = REQUESTS_TOPIC, rate: float = 0.0,
                         fixed_timestamp_ms: int | None = None,
                         truth_out: IO[str] | None = None,
                         progress: tqdm | None = None,
                         engagements_path: str | os.PathLike[str] | None = None,
                         engagements_topic: str = ENGAGEMENTS_TOPIC) -> int:
    """Writes events to a record file (partition/offset None), engagement events to
    `engagements_path`; returns the count of requests written."""
    pace, start = Pace(rate=rate), time.monotonic()
    with RecordWriter(path) as out, contextlib.ExitStack() as stack:
        engagements = (stack.enter_context(RecordWriter(engagements_path))
                       if engagements_path is not None else None)
        for event in events:
            if event.engagement:
                if engagements is None:
                    raise ProducerError("engagement events need an engagements file")
                ts = _stamp(fixed_timestamp_ms)
                engagements.write(Record(value=event.encode(ts), key=event.key,
                                         timestamp_ms=ts, topic=engagements_topic))
                continue
            wait = start + pace.due_s() - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ts = _stamp(fixed_timestamp_ms)
            out.write(Record(value=event.encode(ts), key=event.key, timestamp_ms=ts,
                             topic=topic))
            if truth_out is not None and event.truth is not None:
                write_truth(truth_out, event.truth)
            if progress is not None:
                progress.update(1)
        return out.count


async def send_events_to_kafka(events: Iterable[Event], *, bootstrap: str = DEFAULT_BOOTSTRAP,
                               topic: str = REQUESTS_TOPIC, rate: float = 0.0,
                               fixed_timestamp_ms: int | None = None,
                               truth_out: IO[str] | None = None,
                               progress: tqdm | None = None,
                               max_request_size: int = 1 << 20,
                               engagements_topic: str = ENGAGEMENTS_TOPIC) -> int:
    """Sends events with acks=all (security settings from `RANKER_*`), each stamped with its
    send time; returns once every send is acknowledged.

    Raises aiokafka's KafkaError subclasses on a failed send (the producer is still stopped).
    """
    from aiokafka import AIOKafkaProducer  # imported here: file mode must not need Kafka

    from tools.kafka_io import Outgoing, connection, send_paced

    def encode(event: Event) -> Outgoing:
        ts = _stamp(fixed_timestamp_ms)
        if truth_out is not None and event.truth is not None:
            write_truth(truth_out, event.truth)
        if progress is not None and not event.engagement:
            progress.update(1)
        return Outgoing(event.encode(ts), event.key, ts,
                        engagements_topic if event.engagement else None)

    # Lingering batches a backlog sent as fast as possible; a paced send goes out at once, or
    # every request would wait out the linger before the broker sees it.
    linger_ms = 0 if rate > 0 else 5
    async with AIOKafkaProducer(**connection(bootstrap), acks="all", linger_ms=linger_ms,
                                max_request_size=max_request_size) as producer:
        return await send_paced(producer, topic, events, encode, pace=Pace(rate=rate),
                                paced=lambda event: not event.engagement)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.producer", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="events to emit (default 1000)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="events per second; 0 = as fast as possible (default)")
    p.add_argument("--seed", type=int, default=0,
                   help="event stream seed: same seed, same events (default 0)")
    p.add_argument("--bad-fraction", type=float, default=0.0,
                   help="share of deliberately malformed events, 0..1 (default 0)")
    p.add_argument("--source", choices=SOURCES, default="world",
                   help="world: synthetic world with ground truth (default); random: "
                        "reference create_example_batch style")
    p.add_argument("--world-seed", type=int, default=WorldConfig().seed,
                   help="seed of the world (must match the world the model was trained on)")
    p.add_argument("--truth", metavar="FILE",
                   help="write each valid request's hidden true probabilities here (JSON lines)")
    p.add_argument("--out", metavar="FILE",
                   help="write a record file instead of sending to Kafka")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP,
                   help=f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP})")
    p.add_argument("--topic", default=REQUESTS_TOPIC, help=f"default {REQUESTS_TOPIC}")
    p.add_argument("--fixed-timestamp-ms", type=int, default=None,
                   help="stamp every request with this epoch ms instead of the send time "
                        "(byte-identical output for the same seed)")
    p.add_argument("--too-large-bytes", type=int, default=DEFAULT_TOO_LARGE_BYTES,
                   help=f"size of too_large events (default {DEFAULT_TOO_LARGE_BYTES}); "
                        "the broker must accept messages this large")
    p.add_argument("--candidates", type=_candidates_arg, default=None, metavar="N|MIN:MAX",
                   help="candidates per request: N, or drawn uniformly in MIN:MAX "
                        f"(at most {DEFAULT_LIMITS.max_candidates}; default "
                        f"{WorldConfig().num_candidates})")
    p.add_argument("--deadline-ms", type=int, default=None, metavar="N",
                   help="each request is due N ms after it is sent: valid requests carry "
                        "deadline_ms = timestamp_ms + N (default: no deadline)")
    p.add_argument("--server-history", action="store_true",
                   help="send each request's history as engagements first, then the request "
                        "as ranking-request.v2 without history (the worker keeps histories)")
    p.add_argument("--engagements-topic", default=ENGAGEMENTS_TOPIC,
                   help=f"with --server-history (default {ENGAGEMENTS_TOPIC})")
    p.add_argument("--engagements-out", metavar="FILE",
                   help="with --server-history and --out: the record file for engagements")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _candidates_arg(text: str) -> tuple[int, int]:
    try:
        return parse_candidates(text)
    except ProducerError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error(f"--count must be >= 0, got {args.count}")
    if args.rate < 0 or not math.isfinite(args.rate):
        parser.error(f"--rate must be a finite number >= 0 (0 = unpaced), got {args.rate}")
    if not 0.0 <= args.bad_fraction <= 1.0:
        parser.error(f"--bad-fraction must be in [0, 1], got {args.bad_fraction}")
    if args.truth and args.source != "world":
        parser.error("--truth needs --source world: random requests have no ground truth")
    if args.truth and args.out and os.path.abspath(args.truth) == os.path.abspath(args.out):
        parser.error("--truth and --out must be different files")

    if args.deadline_ms is not None and args.deadline_ms < 0:
        parser.error(f"--deadline-ms must be >= 0, got {args.deadline_ms}")
    if args.server_history and args.out and not args.engagements_out:
        parser.error("--server-history with --out needs --engagements-out FILE")
    if args.engagements_out and not (args.server_history and args.out):
        parser.error("--engagements-out goes with --server-history and --out")
    events = generate_events(args.seed, args.count, source=args.source,
                             bad_fraction=args.bad_fraction,
                             world_config=WorldConfig(seed=args.world_seed),
                             too_large_bytes=args.too_large_bytes, candidates=args.candidates,
                             deadline_after_ms=args.deadline_ms)
    if args.server_history:
        events = with_server_history(events)
    truth_out = open(args.truth, "w", encoding="utf-8") if args.truth else None
    progress = tqdm(total=args.count, unit="req", desc="produce",
                    disable=True if args.no_progress else None)
    try:
        if args.out:
            written = write_events_to_file(
                events, args.out, topic=args.topic, rate=args.rate,
                fixed_timestamp_ms=args.fixed_timestamp_ms, truth_out=truth_out,
                progress=progress, engagements_path=args.engagements_out,
                engagements_topic=args.engagements_topic)
            where = args.out
        else:
            from aiokafka.errors import (ClusterAuthorizationFailedError, KafkaError,
                                         TopicAuthorizationFailedError)

            room = args.too_large_bytes + 64 * 1024 if args.bad_fraction > 0 else 0
            try:
                written = asyncio.run(send_events_to_kafka(
                    events, bootstrap=args.bootstrap, topic=args.topic, rate=args.rate,
                    fixed_timestamp_ms=args.fixed_timestamp_ms, truth_out=truth_out,
                    progress=progress, max_request_size=max(1 << 20, room),
                    engagements_topic=args.engagements_topic))
            except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as error:
                print(f"error: not authorized: {args.bootstrap} refused this client Write on "
                      f"topic {args.topic!r} ({type(error).__name__}); grant it (`python -m "
                      f"tools.acls --producer User:NAME` prints the ACL)", file=sys.stderr)
                return 2
            except KafkaError as error:
                print(f"error: sending to {args.bootstrap} topic {args.topic!r} failed: "
                      f"{error!r}; is the broker running (`make broker`)? A too_large event "
                      f"needs the broker to accept {args.too_large_bytes}-byte messages "
                      f"(or lower --too-large-bytes)", file=sys.stderr)
                return 1
            except SettingsError as error:  # a RANKER_* variable (security) it cannot use
                print(f"error: {error}", file=sys.stderr)
                return 2
            where = f"{args.bootstrap}/{args.topic}"
    finally:
        progress.close()
        if truth_out is not None:
            truth_out.close()
    print(f"produced {written} events to {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
