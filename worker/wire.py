"""The wire contract: every rule of the messages the worker reads and writes, stated once.

Here are the schema ids, the runtime caps (`ValidationLimits`), the ranges of ids, surfaces,
counts and times, the keys of each map, and for each rule what it expects and how a producer
fixes a breach. Two readers take the request's rules from here:

  - `request_type` builds msgspec Structs from them, so msgspec's typed decoder checks every
    per-field rule in C: it is the one acceptor (`worker.validation.check_typed`);
  - `worker.validation.first_error` walks a refused message's untyped decode with the same
    rules, to name the first one it breaks.

Three rules no type can state (no repeated key, action or candidate post id) are checked by
`worker.validation` after decoding. Every breach of a rule here is a `ValidationError` with
code "invalid" (`worker.errors`, where the dead-letter codes are enumerated).
schemas/ranking-request.v1.json and v2 write the same contract for producers;
tests/test_schemas.py keeps them in agreement with these types both ways.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from phoenix.actions import ACTION_NAMES
from phoenix.config import RankerConfig

REQUEST_SCHEMA = "ranking-request.v1"
REQUEST_SCHEMA_V2 = "ranking-request.v2"  # history optional: absent = the worker's own
REQUEST_SCHEMAS = (REQUEST_SCHEMA, REQUEST_SCHEMA_V2)  # what the worker reads
RESULT_SCHEMA = "ranking-result.v1"
RESULT_SCHEMA_V2 = "ranking-result.v2"  # the answer to a v2 request: v1 + where history came from
RESULT_SCHEMAS = (RESULT_SCHEMA, RESULT_SCHEMA_V2)
ENGAGEMENT_SCHEMA = "engagement.v1"
DEAD_LETTER_SCHEMA = "dead-letter.v2"  # what the worker writes

U64_MAX = 2**64 - 1  # ids are unsigned 64-bit; 0 is padding
TOP_K_MAX = 2**31 - 1  # top_k above the candidate count means "all"; int32 keeps it portable.
EPOCH_MS_MAX = 2**63 - 1  # timestamp_ms / deadline_ms: non-negative signed 64-bit.


@dataclasses.dataclass(frozen=True)
class ValidationLimits:
    max_message_bytes: int = 1 << 20  # Byte cap checked before decoding (1 MiB).
    max_history: int = 512  # Most history items accepted on the wire.
    history_keep: int = 32  # S: longer histories keep only their most recent S items.
    max_candidates: int = 1024  # Most candidates accepted (all ranked in one row by assembly).
    num_surfaces: int = 16  # V: product surfaces are ints in [0, V).
    max_request_id_len: int = 128  # request_id length in characters (code points).

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ValidationLimits.{field.name} must be a positive int, "
                                 f"got {value!r}")

    @classmethod
    def from_config(cls, config: RankerConfig, **overrides: int) -> "ValidationLimits":
        """Limits whose history length and surface vocabulary match the model's."""
        values = dict(history_keep=config.history_seq_len,
                      num_surfaces=config.product_surface_vocab_size)
        values.update(overrides)
        return cls(**values)

    @property
    def max_list_len(self) -> int:
        """The longest list any request may hold: the untyped decoder's list cap, and so a
        bound on every list the types accept."""
        return max(self.max_history, self.max_candidates)


DEFAULT_LIMITS = ValidationLimits()


# ------------------------------------------------------------------------------ the rules

@dataclasses.dataclass(frozen=True)
class IntRule:
    """An integer field: a msgpack int (never a float, never a boolean) in lo..hi."""

    lo: int
    hi: int
    expected: str  # what the field must be, as an error message says it
    fix: str  # how a producer fixes a value out of range

    @property
    def type(self) -> Any:
        # msgspec refuses bounds outside int64, but a msgpack int stops at 2**64-1 anyway, so
        # `ge` alone is exactly the range lo..U64_MAX.
        return Annotated[int, Meta(ge=self.lo, **({} if self.hi == U64_MAX else
                                                  {"le": self.hi}))]


@dataclasses.dataclass(frozen=True)
class LengthRule:
    """How many items (or characters) a list (or string) holds: lo..hi."""

    lo: int
    hi: int
    unit: str  # what is counted, as an error message says it: "items", "characters"
    what: str  # what the value must be, in "must be {what}"
    fix: str

    @property
    def meta(self) -> Meta:
        return Meta(min_length=self.lo, max_length=self.hi)


@dataclasses.dataclass(frozen=True)
class MapRule:
    """A map's keys, in the order their values are checked."""

    where: str  # what the map is, in "x is not a field of {where}"
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @functools.cached_property
    def exact(self) -> frozenset[str]:
        """The keys of a map that has every key, required and optional."""
        return frozenset(self.required + self.optional)


ID = IntRule(1, U64_MAX, f"an unsigned 64-bit integer in 1..{U64_MAX}",
             "0 is reserved for padding and ids are unsigned 64-bit; send the real id")
TOP_K = IntRule(1, TOP_K_MAX, f"an integer in 1..{TOP_K_MAX}",
                "send how many of the best candidates to return, or omit it for all")
_EPOCH_MS = f"an integer epoch time in milliseconds, 0..{EPOCH_MS_MAX}"
TIMESTAMP_MS = IntRule(0, EPOCH_MS_MAX, _EPOCH_MS,
                       "send the producer's clock in epoch milliseconds, or omit it")
DEADLINE_MS = IntRule(0, EPOCH_MS_MAX, _EPOCH_MS,
                      "send an absolute epoch-milliseconds deadline, or omit it")
# Every integer field by its key (a key means the same at every level); the surface's range
# is the model's, in `LimitRules.ints`.
INTS = {"user_id": ID, "post_id": ID, "author_id": ID, "top_k": TOP_K,
        "timestamp_ms": TIMESTAMP_MS, "deadline_ms": DEADLINE_MS}
NILABLE = ("top_k", "timestamp_ms", "deadline_ms")  # optional; nil, like absent, is not given

REQUEST = MapRule("a ranking request", ("schema", "request_id", "user_id", "history",
                                        "candidates"), NILABLE)
# ranking-request.v2: history optional (absent: the worker's history table fills it in).
REQUEST_V2 = MapRule(REQUEST.where, tuple(k for k in REQUEST.required if k != "history"),
                     ("history",) + REQUEST.optional)
REQUEST_KEYS = {REQUEST_SCHEMA: REQUEST, REQUEST_SCHEMA_V2: REQUEST_V2}
HISTORY_ITEM = MapRule("a history item", ("post_id", "author_id", "actions", "surface"))
CANDIDATE = MapRule("a candidate", ("post_id", "author_id", "surface"))
ACTIONS_MAX = len(ACTION_NAMES)  # Each action at most once per history item.

EXPECTED_WHEN_MISSING = {  # What a missing key's error asks for.
    "schema": f"the string {REQUEST_SCHEMA!r}",
    "request_id": "a non-empty string",
    "user_id": ID.expected,
    "history": "an array of engagement maps, possibly empty, most recent last",
    "candidates": "a non-empty array of candidate maps",
    "post_id": ID.expected,
    "author_id": ID.expected,
    "actions": "an array of action names, possibly empty",
    "surface": "an integer product surface",
}


@dataclasses.dataclass(frozen=True)
class LimitRules:
    """The rules whose bounds are a `ValidationLimits`' caps."""

    request_id: LengthRule
    history: LengthRule
    candidates: LengthRule
    actions: LengthRule  # of one history item
    ints: dict[str, IntRule]  # `INTS` and the surface


@functools.lru_cache(maxsize=32)
def limit_rules(limits: ValidationLimits) -> LimitRules:
    cap, v = limits.max_candidates, limits.num_surfaces
    # Never looser than the untyped decoder's list cap, so what the types accept, it decodes.
    actions_max = min(ACTIONS_MAX, limits.max_list_len)
    return LimitRules(
        request_id=LengthRule(1, limits.max_request_id_len, "characters",
                              f"a string of 1..{limits.max_request_id_len} characters",
                              "send a short unique id such as a UUID"),
        history=LengthRule(0, limits.max_history, "items", "an array of engagement maps",
                           f"send only the most recent {limits.max_history} items (the "
                           f"model uses the last {limits.history_keep})"),
        candidates=LengthRule(1, cap, "items", "an array of candidate maps",
                              f"send at least one and at most {cap} candidates (split larger "
                              "sets into several requests)"),
        actions=LengthRule(0, actions_max, "items", "an array of action names",
                           f"send at most {actions_max} actions per item, each once"),
        ints={**INTS, "surface": IntRule(0, v - 1, f"an integer product surface in 0..{v - 1}",
                                         f"map it into the model's vocabulary of {v} surfaces")},
    )


# -------------------------------------------------------------------- the rules as types

ActionName = Literal[ACTION_NAMES]  # type: ignore[valid-type]  # The tuple spells the enum.


def _struct(name: str, keys: MapRule, types: dict[str, Any], **options: Any) -> type[Struct]:
    # gc=False: these objects hold no cycles and die right after decoding. UNSET, not None,
    # for an absent optional key: an absent key and an explicit nil re-encode to their own
    # sizes (validation compares sizes to find repeated keys).
    fields = [(key, types[key]) for key in keys.required]
    fields += [(key, types[key] | UnsetType, UNSET) for key in keys.optional]
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False, kw_only=True,
                             **options)


@functools.lru_cache(maxsize=32)
def request_type(limits: ValidationLimits, schema: str = REQUEST_SCHEMA) -> type[Struct]:
    """The request Struct of `schema` (v1, or v2 where history is optional) whose bounds are
    `limits`' caps: every rule above, as msgspec types."""
    rules = limit_rules(limits)
    types = {key: rule.type | None if key in NILABLE else rule.type
             for key, rule in rules.ints.items()}
    types["actions"] = Annotated[tuple[ActionName, ...],  # A tuple: it keys the mask cache.
                                 rules.actions.meta]
    history_item = _struct("HistoryItem", HISTORY_ITEM, types)
    candidate = _struct("Candidate", CANDIDATE, types)
    types.update({"schema": Literal[schema],  # type: ignore[valid-type]
                  "request_id": Annotated[str, rules.request_id.meta],
                  "history": Annotated[list[history_item], rules.history.meta],  # type: ignore
                  "candidates": Annotated[list[candidate],  # type: ignore[valid-type]
                                          rules.candidates.meta]})
    return _struct("Request", REQUEST_KEYS[schema], types)


@functools.lru_cache(maxsize=32)
def decoder(limits: ValidationLimits, schema: str = REQUEST_SCHEMA) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(request_type(limits, schema))


ENCODER = msgspec.msgpack.Encoder()  # Thread-safe: each call writes its own buffer.
