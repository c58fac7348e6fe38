"""Validate a decoded ranking-request.v1 map and turn it into a `RankingRequest` of numpy arrays.

Letters: n history items on the wire, s = min(n, history_keep) kept, c candidates, A actions.

`parse_requests` first tries the typed decoder (`check_typed`: msgspec Structs of `worker.wire`,
then column checks for the rules a type cannot state). It only ever accepts; anything it does
not take whole goes to `validate_request` on msgpack's untyped decode, which decides and names
the first broken rule, so every error's code, field and message come from one place. The
typed path only decodes and checks; `to_requests` then builds the arrays of a whole batch's
requests at once.

`validate_request` checks each list twice over only when it is bad: a fast path tests the whole
column at once (C-level `set(map(type, ...))`, `min`/`max`, counts for repeats); only when it
fails does a slow path walk the items in order to name the first offending field. All paths
apply the rules written out in schemas/README.md and schemas/ranking-request.v1.json.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec
import numpy as np

from phoenix.actions import ACTION_BIT, ACTION_NAMES
from phoenix.config import RankerConfig
from worker import codec, wire
from worker.codec import REQUEST_SCHEMA, REQUEST_SCHEMA_V2, U64_MAX
from worker.errors import (
    INVALID,
    MSG_BAD_LENGTH,
    MSG_BAD_SCHEMA,
    MSG_BAD_SCHEMA_ONE_OF,
    MSG_DUPLICATE_ACTION,
    MSG_DUPLICATE_CANDIDATE,
    MSG_FLOAT_FOR_INT,
    MSG_INT_RANGE,
    MSG_MISSING,
    MSG_NOT_A_MAP,
    MSG_UNKNOWN_ACTION,
    MSG_BIN_KEY,
    MSG_UNKNOWN_KEY,
    MSG_WRONG_TYPE,
    ValidationError,
    describe,
)
from worker.request import HISTORY_FROM_TABLE, RankingRequest
from worker.wire import EPOCH_MS_MAX, TOP_K_MAX


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


DEFAULT_LIMITS = ValidationLimits()

_TOP_REQUIRED = ("schema", "request_id", "user_id", "history", "candidates")
_TOP_OPTIONAL = ("top_k", "timestamp_ms", "deadline_ms")
_TOP_ALLOWED = frozenset(_TOP_REQUIRED + _TOP_OPTIONAL)
_TOP_REQUIRED_SET = frozenset(_TOP_REQUIRED)
# ranking-request.v2: history optional (absent: the worker's history table fills it in).
_TOP_REQUIRED_V2 = tuple(key for key in _TOP_REQUIRED if key != "history")
_TOP_OPTIONAL_V2 = ("history",) + _TOP_OPTIONAL
V1_ONLY = (REQUEST_SCHEMA,)  # what `validate_request` reads unless told otherwise
_HISTORY_KEYS = ("post_id", "author_id", "actions", "surface")
_CANDIDATE_KEYS = ("post_id", "author_id", "surface")
_ACTION_SET = frozenset(ACTION_NAMES)

_ID_EXPECTED = "an unsigned 64-bit integer in 1..18446744073709551615"
_ID_FIX = "0 is reserved for padding and ids are unsigned 64-bit; send the real id"
_EXPECTED_FOR_KEY = {  # Shown when a key is missing.
    "schema": f"the string {REQUEST_SCHEMA!r}",
    "request_id": "a non-empty string",
    "user_id": _ID_EXPECTED,
    "history": "an array of engagement maps, possibly empty, most recent last",
    "candidates": "a non-empty array of candidate maps",
    "post_id": _ID_EXPECTED,
    "author_id": _ID_EXPECTED,
    "actions": "an array of action names, possibly empty",
    "surface": "an integer product surface",
}


# ---------------------------------------------------------------- error builders (slow path)

def _join(prefix: str, key: object) -> str:
    # A bin key (msgpack bytes) is named by its text, as a client writer spelled it.
    if isinstance(key, (bytes, bytearray)):
        name = bytes(key).decode("utf-8", "replace")
    else:
        name = key if isinstance(key, str) else str(key)
    return f"{prefix}.{name}" if prefix else name


def _unknown_key(key: object, prefix: str, allowed: Sequence[str], where: str) -> ValidationError:
    hint = ""
    if isinstance(key, bytes):
        return ValidationError(INVALID, MSG_BIN_KEY.format(field=_join(prefix, key)),
                               field=_join(prefix, key))
    if isinstance(key, str):
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValidationError(INVALID, MSG_UNKNOWN_KEY.format(
        field=_join(prefix, key), where=where, hint=hint, allowed=", ".join(allowed)),
        field=_join(prefix, key))


def _check_keys(obj: dict, prefix: str, required: Sequence[str], optional: Sequence[str],
                where: str, expected: Mapping[str, str] = _EXPECTED_FOR_KEY) -> None:
    allowed = tuple(required) + tuple(optional)
    for key in obj:
        if key not in allowed:
            raise _unknown_key(key, prefix, allowed, where)
    for key in required:
        if key not in obj:
            field = _join(prefix, key)
            raise ValidationError(INVALID, MSG_MISSING.format(
                field=field, expected=expected[key]), field=field)


def _int_error(value: object, field: str, expected: str, fix: str) -> ValidationError:
    if isinstance(value, float):
        message = MSG_FLOAT_FOR_INT.format(field=field, expected=expected, got=describe(value))
    elif type(value) is not int:
        message = MSG_WRONG_TYPE.format(field=field, expected=expected, got=describe(value))
    else:
        message = MSG_INT_RANGE.format(field=field, expected=expected, got=value, fix=fix)
    return ValidationError(INVALID, message, field=field)


def _int(value: object, field: str, lo: int, hi: int, expected: str, fix: str) -> int:
    if type(value) is int and lo <= value <= hi:  # `type is`: a bool is not an int here.
        return value
    raise _int_error(value, field, expected, fix)


def _u64(value: object, field: str) -> int:
    return _int(value, field, 1, U64_MAX, _ID_EXPECTED, _ID_FIX)


def _surface(value: object, field: str, limits: ValidationLimits) -> int:
    v = limits.num_surfaces
    return _int(value, field, 0, v - 1, f"an integer product surface in 0..{v - 1}",
                f"map it into the model's vocabulary of {v} surfaces")


def _map(value: object, field: str, what: str) -> dict:
    if type(value) is dict:  # Exact types, as on the fast path (msgpack makes no subclasses).
        return value
    raise ValidationError(INVALID, MSG_WRONG_TYPE.format(
        field=field, expected=f"a map ({what})", got=describe(value)), field=field)


def _list(value: object, field: str, lo: int, hi: int, what: str, fix: str) -> list:
    if type(value) is not list:
        raise ValidationError(INVALID, MSG_WRONG_TYPE.format(
            field=field, expected=f"an array of {what}", got=describe(value)), field=field)
    if not lo <= len(value) <= hi:
        raise ValidationError(INVALID, MSG_BAD_LENGTH.format(
            field=field, expected=f"{lo}..{hi} items", got=f"{len(value)} items", fix=fix),
            field=field)
    return value


def _action_error_in(actions: object, field: str) -> ValidationError | None:
    """The first problem in one history item's action list, or None."""
    if type(actions) is not list:
        return ValidationError(INVALID, MSG_WRONG_TYPE.format(
            field=field, expected="an array of action names", got=describe(actions)),
            field=field)
    first_at: dict[str, int] = {}
    for j, name in enumerate(actions):
        path = f"{field}[{j}]"
        if type(name) is not str:
            return ValidationError(INVALID, MSG_WRONG_TYPE.format(
                field=path, expected="an action name (a string)", got=describe(name)),
                field=path)
        if name not in _ACTION_SET:
            close = difflib.get_close_matches(name, ACTION_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return ValidationError(INVALID, MSG_UNKNOWN_ACTION.format(
                field=path, got=describe(name), hint=hint, allowed=", ".join(ACTION_NAMES)),
                field=path)
        if name in first_at:
            return ValidationError(INVALID, MSG_DUPLICATE_ACTION.format(
                field=path, got=repr(name), first=f"{field}[{first_at[name]}]"), field=path)
        first_at[name] = j
    return None


def _raise_first_item_error(items: list, name: str, keys: Sequence[str],
                            limits: ValidationLimits) -> None:
    """Slow path: walk `items` in order and raise the first rule they break."""
    where = "a history item" if name == "history" else "a candidate"
    for i, item in enumerate(items):
        prefix = f"{name}[{i}]"
        _check_keys(_map(item, prefix, where), prefix, keys, (), where)
        _u64(item["post_id"], f"{prefix}.post_id")
        _u64(item["author_id"], f"{prefix}.author_id")
        if "actions" in keys:
            error = _action_error_in(item["actions"], f"{prefix}.actions")
            if error is not None:
                raise error
        _surface(item["surface"], f"{prefix}.surface", limits)


def _paths_disagree(name: str) -> ValidationError:
    # Unreachable unless the two paths drift apart (the fuzz tests look for it). Dead-lettering
    # keeps the message for inspection and the worker running; the text says it is our bug.
    return ValidationError(INVALID, f"{name} failed the fast check but passed the item-by-item "
                           "check: a worker bug, not necessarily bad input; please report it "
                           "with this dead letter", field=name)


# ------------------------------------------------------------------------- fast column checks

def _all_ints_in(values: list, lo: int, hi: int) -> bool:
    """True iff every value is an int (not bool, not float) in [lo, hi]. C-level loops only."""
    if not values:
        return True
    return set(map(type, values)) == {int} and min(values) >= lo and max(values) <= hi


def _columns(items: list, keys: Sequence[str]) -> list[list] | None:
    """One list per key if every item is a dict with exactly `keys`, else None."""
    if items and set(map(type, items)) != {dict}:
        return None
    if sum(map(len, items)) != len(keys) * len(items):  # With all keys present: no extras.
        return None
    try:
        return [[item[key] for item in items] for key in keys]
    except KeyError:
        return None


# Masks of action lists seen before, keyed by the list as a tuple: histories repeat a few
# combinations, and one dict lookup beats summing bits per name. Only valid lists (known names,
# none twice) are stored, so a hit needs no further check; the cap bounds hostile traffic.
_MASK_OF: dict[tuple[str, ...], int] = {}
_MASK_CACHE_SIZE = 1 << 16


def _mask(names: tuple[str, ...]) -> int | None:
    """The action mask of known `names`, or None if a name repeats (fewer bits than names)."""
    mask = sum(map(ACTION_BIT.__getitem__, names))
    return mask if mask.bit_count() == len(names) else None


def _action_masks(action_tuples: Sequence[tuple[str, ...]], start: int) -> np.ndarray | None:
    """[n - start] uint32 masks of the tuples from `start` on, or None if any tuple (kept or
    not) names an action twice. Every name must already be a known action."""
    n = len(action_tuples)
    try:  # The common case: every tuple seen before, one C loop.
        masks = np.fromiter(map(_MASK_OF.__getitem__, action_tuples), np.uint32, n)
    except KeyError:
        masks = np.empty(n, np.uint32)
        for i, names in enumerate(action_tuples):
            mask = _MASK_OF.get(names)
            if mask is None:
                mask = _mask(names)
                if mask is None:
                    return None
                if len(_MASK_OF) < _MASK_CACHE_SIZE:
                    _MASK_OF[names] = mask
            masks[i] = mask
    return masks[start:]  # [s]


def _checked_action_masks(action_lists: list, start: int) -> np.ndarray | None:
    """`_action_masks`, or None if any list breaks a rule (not a list, not str, unknown name,
    repeated name) anywhere in `action_lists`."""
    if action_lists and set(map(type, action_lists)) != {list}:
        return None
    flat = list(itertools.chain.from_iterable(action_lists))
    if flat and (set(map(type, flat)) != {str} or not _ACTION_SET.issuperset(flat)):
        return None
    return _action_masks(list(map(tuple, action_lists)), start)


# --------------------------------------------------------------------------------- the fields

def _history(value: object, limits: ValidationLimits
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cap = limits.max_history
    items = _list(value, "history", 0, cap, "engagement maps",
                  f"send only the most recent {cap} items (the model uses the last "
                  f"{limits.history_keep})")
    n = len(items)
    start = max(0, n - limits.history_keep)  # Most recent last: keep the tail.
    columns = _columns(items, _HISTORY_KEYS)
    masks = None
    if columns is not None:
        post_ids, author_ids, action_lists, surfaces = columns
        if (_all_ints_in(post_ids, 1, U64_MAX) and _all_ints_in(author_ids, 1, U64_MAX)
                and _all_ints_in(surfaces, 0, limits.num_surfaces - 1)):
            masks = _checked_action_masks(action_lists, start)
    if masks is None:
        _raise_first_item_error(items, "history", _HISTORY_KEYS, limits)
        raise _paths_disagree("history")
    return (np.array(post_ids[start:], dtype=np.uint64),  # [s]
            np.array(author_ids[start:], dtype=np.uint64),  # [s]
            masks,  # [s]
            np.array(surfaces[start:], dtype=np.int32))  # [s]


def _candidates(value: object, limits: ValidationLimits
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cap = limits.max_candidates
    items = _list(value, "candidates", 1, cap, "candidate maps",
                  f"send at least one and at most {cap} candidates (split larger sets "
                  "into several requests)")
    columns = _columns(items, _CANDIDATE_KEYS)
    if columns is None or not (
            _all_ints_in(columns[0], 1, U64_MAX) and _all_ints_in(columns[1], 1, U64_MAX)
            and _all_ints_in(columns[2], 0, limits.num_surfaces - 1)):
        _raise_first_item_error(items, "candidates", _CANDIDATE_KEYS, limits)
        raise _paths_disagree("candidates")
    post_ids = np.array(columns[0], dtype=np.uint64)  # [c]
    if len(set(columns[0])) != len(items):  # A C-level set beats np.unique at these sizes.
        _, first = np.unique(post_ids, return_index=True)
        repeat = np.ones(post_ids.size, dtype=bool)
        repeat[first] = False
        j = int(np.flatnonzero(repeat)[0])  # The earliest item that repeats an earlier id.
        i = int(np.flatnonzero(post_ids[:j] == post_ids[j])[0])
        field = f"candidates[{j}].post_id"
        raise ValidationError(INVALID, MSG_DUPLICATE_CANDIDATE.format(
            field=field, got=int(post_ids[j]), first=f"candidates[{i}]"), field=field)
    return (post_ids,
            np.array(columns[1], dtype=np.uint64),  # [c]
            np.array(columns[2], dtype=np.int32))  # [c]


def _request_id(value: object, limits: ValidationLimits) -> str:
    cap = limits.max_request_id_len
    if not isinstance(value, str):
        raise ValidationError(INVALID, MSG_WRONG_TYPE.format(
            field="request_id", expected=f"a string of 1..{cap} characters",
            got=describe(value)), field="request_id")
    if not 1 <= len(value) <= cap:
        raise ValidationError(INVALID, MSG_BAD_LENGTH.format(
            field="request_id", expected=f"1..{cap} characters", got=f"{len(value)}",
            fix="send a short unique id such as a UUID"), field="request_id")
    return value


def _optional_int(obj: dict, key: str, lo: int, hi: int, expected: str, fix: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _int(value, key, lo, hi, expected, fix)


def _readable_request_id(obj: dict, limits: ValidationLimits) -> str | None:
    value = obj.get("request_id")
    if isinstance(value, str) and 1 <= len(value) <= limits.max_request_id_len:
        return value
    return None


# ----------------------------------------------------------------------------- public entry

def validate_request(obj: object, limits: ValidationLimits = DEFAULT_LIMITS,
                     schemas: Sequence[str] = V1_ONLY) -> RankingRequest:
    """Check a decoded request against ranking-request.v1 (or any id in `schemas`: the worker
    also reads ranking-request.v2) and build its arrays.

    Raises ValidationError(code="invalid", field=<path>) on the first broken rule; its
    `request_id` is set whenever the message carried a readable one.
    """
    if not isinstance(obj, dict):
        raise ValidationError(INVALID, MSG_NOT_A_MAP.format(got=describe(obj)))
    request_id = _readable_request_id(obj, limits)
    try:
        return _validate(obj, limits, schemas)
    except ValidationError as error:
        if error.request_id is None:
            error.request_id = request_id
        raise


def _bad_schema(schema: object, schemas: Sequence[str]) -> ValidationError:
    if len(schemas) == 1:
        message = MSG_BAD_SCHEMA.format(field="schema", expected=schemas[0],
                                        got=describe(schema))
    else:
        message = MSG_BAD_SCHEMA_ONE_OF.format(
            field="schema", expected=", ".join(map(repr, schemas)), got=describe(schema))
    return ValidationError(INVALID, message, field="schema")


def _validate(obj: dict, limits: ValidationLimits,
              schemas: Sequence[str] = V1_ONLY) -> RankingRequest:
    # A foreign schema id explains every other difference, so it is reported first.
    schema = obj.get("schema", REQUEST_SCHEMA)
    if not (type(schema) is str and schema in schemas):
        raise _bad_schema(schema, schemas)
    v2 = schema == REQUEST_SCHEMA_V2
    keys = obj.keys()
    if v2:
        _check_keys(obj, "", _TOP_REQUIRED_V2, _TOP_OPTIONAL_V2, "a ranking request")
    elif not (keys <= _TOP_ALLOWED and keys >= _TOP_REQUIRED_SET):
        _check_keys(obj, "", _TOP_REQUIRED, _TOP_OPTIONAL, "a ranking request")
    request_id = _request_id(obj["request_id"], limits)
    user_id = _u64(obj["user_id"], "user_id")
    # A v2 request without history gets the empty one here; the pipeline fills in the table's.
    h_posts, h_authors, h_actions, h_surfaces = _history(obj.get("history", []), limits)
    c_posts, c_authors, c_surfaces = _candidates(obj["candidates"], limits)
    top_k = _optional_int(obj, "top_k", 1, TOP_K_MAX, f"an integer in 1..{TOP_K_MAX}",
                          "send how many of the best candidates to return, or omit it for all")
    epoch = f"an integer epoch time in milliseconds, 0..{EPOCH_MS_MAX}"
    timestamp_ms = _optional_int(obj, "timestamp_ms", 0, EPOCH_MS_MAX, epoch,
                                 "send the producer's clock in epoch milliseconds, or omit it")
    deadline_ms = _optional_int(obj, "deadline_ms", 0, EPOCH_MS_MAX, epoch,
                                "send an absolute epoch-milliseconds deadline, or omit it")
    return RankingRequest(
        request_id=request_id, user_id=user_id,
        history_post_ids=h_posts, history_author_ids=h_authors,
        history_actions=h_actions, history_surfaces=h_surfaces,
        candidate_post_ids=c_posts, candidate_author_ids=c_authors,
        candidate_surfaces=c_surfaces,
        top_k=top_k, timestamp_ms=timestamp_ms, deadline_ms=deadline_ms,
        **_version_fields(schema, "history" in obj))


_ACTIONS_OF = operator.attrgetter("actions")
_IDS_AND_SURFACE_OF = operator.attrgetter("post_id", "author_id", "surface")
_POST_OF = operator.attrgetter("post_id")


def _typed_decode(data: bytes, limits: ValidationLimits,
                  schemas: Sequence[str]) -> msgspec.Struct | None:
    """The message as the Struct of the first of `schemas` whose types take it whole."""
    for schema in schemas:  # v1 first: a v2 message fails it at its first key, the schema id
        try:
            return wire.decoder(limits, schema).decode(data)
        except msgspec.MsgspecError:
            continue
    return None


class CheckedRequest(NamedTuple):
    """A request the typed decoder took whole and that passed every rule: decoded and
    validated, not yet arrays (`to_requests` builds those for a whole batch at once)."""

    typed: msgspec.Struct  # wire.request_type(limits, schema)
    start: int  # the first history item kept (the most recent `history_keep`)
    action_masks: np.ndarray  # [s] uint32, of the kept items


def check_typed(data: object, limits: ValidationLimits = DEFAULT_LIMITS,
                schemas: Sequence[str] = V1_ONLY) -> CheckedRequest | None:
    """The checked request if the typed decoder takes `data` whole, else None: then
    `validate_request` must decide, and name what is wrong. It never accepts what
    `validate_request` refuses.

    Requests that are valid but not in msgpack's shortest encoding (say, a small id written as
    uint64) also get None: the length check below cannot tell them from repeated keys.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > limits.max_message_bytes:
        return None
    typed = _typed_decode(data, limits, schemas)
    if typed is None:
        return None
    # msgspec keeps the last of a repeated key silently. Any repeat makes the message longer
    # than the shortest encoding of what was decoded, and no encoding is shorter than that.
    if len(wire.ENCODER.encode(typed)) != len(data):
        return None
    candidates = typed.candidates
    if len(set(map(_POST_OF, candidates))) != len(candidates):
        return None
    history = [] if typed.history is msgspec.UNSET else typed.history
    start = max(0, len(history) - limits.history_keep)  # Most recent last: keep the tail.
    masks = _action_masks(list(map(_ACTIONS_OF, history)), start)  # [s]
    return None if masks is None else CheckedRequest(typed, start, masks)


def _rows(triples: Iterable[tuple[int, int, int]], n: int) -> np.ndarray:
    """[n, 3] uint64 from `n` triples of ints that fit."""
    return np.fromiter(itertools.chain.from_iterable(triples), np.uint64, 3 * n).reshape(n, 3)


def _given(value: object) -> object:
    return None if value is msgspec.UNSET else value


def _version_fields(schema: str, has_history: bool) -> dict:
    """RankingRequest's version and history source (defaults: v1, the request's own)."""
    if schema != REQUEST_SCHEMA_V2:
        return {}
    return {"version": 2, **({} if has_history else {"history_source": HISTORY_FROM_TABLE})}


def to_requests(checked: Sequence[CheckedRequest]) -> list[RankingRequest]:
    """The requests' arrays, built for all of them at once: one array per field over every
    request (numpy's per-call cost dominates at a request's size), cut into per-request views.
    """
    kept = [() if c.typed.history is msgspec.UNSET else c.typed.history[c.start:]
            for c in checked]
    candidates = [c.typed.candidates for c in checked]
    h_ends = list(itertools.accumulate(map(len, kept)))
    c_ends = list(itertools.accumulate(map(len, candidates)))
    history = _rows(map(_IDS_AND_SURFACE_OF, itertools.chain.from_iterable(kept)),
                    h_ends[-1] if h_ends else 0)  # [H, 3] over all requests
    every = _rows(map(msgspec.structs.astuple, itertools.chain.from_iterable(candidates)),
                  c_ends[-1] if c_ends else 0)  # [N, 3]
    h_surfaces, c_surfaces = history[:, 2].astype(np.int32), every[:, 2].astype(np.int32)
    requests, h0, c0 = [], 0, 0
    for (typed, _, masks), h1, c1 in zip(checked, h_ends, c_ends):
        requests.append(RankingRequest(
            request_id=typed.request_id, user_id=typed.user_id,
            history_post_ids=history[h0:h1, 0], history_author_ids=history[h0:h1, 1],  # [s]
            history_actions=masks, history_surfaces=h_surfaces[h0:h1],  # [s]
            candidate_post_ids=every[c0:c1, 0], candidate_author_ids=every[c0:c1, 1],  # [c]
            candidate_surfaces=c_surfaces[c0:c1],  # [c]
            top_k=_given(typed.top_k), timestamp_ms=_given(typed.timestamp_ms),
            deadline_ms=_given(typed.deadline_ms),
            **_version_fields(typed.schema, typed.history is not msgspec.UNSET)))
        h0, c0 = h1, c1
    return requests


def parse_typed(data: object, limits: ValidationLimits = DEFAULT_LIMITS
                ) -> RankingRequest | None:
    """`check_typed` and its arrays: the request, or None when `validate_request` must decide."""
    checked = check_typed(data, limits)
    return None if checked is None else to_requests([checked])[0]


def parse_requests(values: Sequence[bytes], limits: ValidationLimits = DEFAULT_LIMITS,
                   schemas: Sequence[str] = V1_ONLY) -> list[RankingRequest | ValidationError]:
    """`parse_request` for a batch of messages, in order, each a request or its error; the
    arrays of those the typed decoder takes are built in one `to_requests`."""
    out: list[RankingRequest | ValidationError | CheckedRequest] = []
    for data in values:
        checked = check_typed(data, limits, schemas)
        if checked is None:
            try:
                checked = validate_request(codec.decode_request_bytes(data, limits), limits,
                                           schemas)
            except ValidationError as error:
                checked = error
        out.append(checked)
    typed = [i for i, item in enumerate(out) if isinstance(item, CheckedRequest)]
    for i, request in zip(typed, to_requests([out[i] for i in typed])):
        out[i] = request
    return out


def parse_request(data: bytes, limits: ValidationLimits = DEFAULT_LIMITS,
                  schemas: Sequence[str] = V1_ONLY) -> RankingRequest:
    """Decode and validate one request message. Raises only ValidationError."""
    (parsed,) = parse_requests([data], limits, schemas)
    if isinstance(parsed, ValidationError):
        raise parsed
    return parsed
