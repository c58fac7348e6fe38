"""Wire bytes -> validated `RankingRequest`: msgspec's typed decoder accepts, one walker names
what it refused.

Letters: n history items on the wire, s = min(n, history_keep) kept, c candidates, A actions.

Every rule comes from `worker.wire`, the rule book. `check_typed` is the one acceptor: the
Structs of `wire.request_type` check every per-field rule in C, then the three rules a type
cannot state are checked here (no repeated key, action or candidate post id). It only decodes
and checks; `to_requests` then builds the arrays of a whole batch's requests at once.

A message it refuses goes to msgpack's untyped decoder (`codec.decode_request_bytes`: not
msgpack, over a cap, a repeated key) and then to `first_error`, which walks the decoded map
with the rule book's rules, in the order of schemas/README.md, to name the first broken rule
by its field path. The walker never accepts anything; it only explains.
"""

from __future__ import annotations

import difflib
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec
import numpy as np

from phoenix.actions import ACTION_BIT, ACTION_NAMES
from worker import codec, wire
from worker.errors import (
    INVALID,
    MSG_BAD_LENGTH,
    MSG_BAD_SCHEMA,
    MSG_BAD_SCHEMA_ONE_OF,
    MSG_BIN_KEY,
    MSG_DUPLICATE_ACTION,
    MSG_DUPLICATE_CANDIDATE,
    MSG_FLOAT_FOR_INT,
    MSG_INT_RANGE,
    MSG_MISSING,
    MSG_NOT_A_MAP,
    MSG_UNKNOWN_ACTION,
    MSG_UNKNOWN_KEY,
    MSG_WRONG_TYPE,
    SEE_CONTRACT,
    ValidationError,
    describe,
)
from worker.request import HISTORY_FROM_TABLE, RankingRequest
from worker.wire import (CANDIDATE, DEFAULT_LIMITS, EXPECTED_WHEN_MISSING, HISTORY_ITEM, ID,
                         NILABLE, REQUEST_KEYS, REQUEST_SCHEMA, REQUEST_SCHEMA_V2, IntRule,
                         LengthRule, LimitRules, MapRule, ValidationLimits, limit_rules)

V1_ONLY = (REQUEST_SCHEMA,)  # what the readers below read unless told otherwise
_ACTION_SET = frozenset(ACTION_NAMES)


# ------------------------------------------------------------------ the acceptor (msgspec)

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


_ACTIONS_OF = operator.attrgetter("actions")
_IDS_AND_SURFACE_OF = operator.attrgetter("post_id", "author_id", "surface")
_POST_OF = operator.attrgetter("post_id")


class CheckedRequest(NamedTuple):
    """A request the typed decoder took whole and that passed every rule: decoded and
    validated, not yet arrays (`to_requests` builds those for a whole batch at once)."""

    typed: msgspec.Struct  # wire.request_type(limits, schema)
    start: int  # the first history item kept (the most recent `history_keep`)
    action_masks: np.ndarray  # [s] uint32, of the kept items


def _repeats_a_key(data: bytes, limits: ValidationLimits) -> bool:
    try:
        codec.decode_request_bytes(data, limits)  # its object_pairs_hook refuses repeated keys
    except ValidationError:
        return True
    return False


def _typed(data: bytes, limits: ValidationLimits,
           schemas: Sequence[str]) -> CheckedRequest | str:
    """`data` as the Struct of the first of `schemas` whose types take it, once it has passed
    the rules no type can state; else why not, in msgspec's words or the rule's."""
    reason = "no schema to read"
    for schema in schemas:  # v1 first: a v2 message fails it at its first key, the schema id
        try:
            typed = wire.decoder(limits, schema).decode(data)
            break
        except msgspec.MsgspecError as error:
            reason = str(error)
    else:
        return reason
    # msgspec keeps the last of a repeated key silently. Any repeat makes the message longer
    # than the shortest encoding of what was decoded, and no encoding is shorter than that; a
    # longer one may also be a valid request in a longer encoding (a small id written as a
    # uint64), which msgpack's untyped decoder tells apart.
    if len(wire.ENCODER.encode(typed)) != len(data) and _repeats_a_key(data, limits):
        return "a map repeats a key"
    candidates = typed.candidates
    if len(set(map(_POST_OF, candidates))) != len(candidates):
        return "a candidate post id repeats"
    history = [] if typed.history is msgspec.UNSET else typed.history
    start = max(0, len(history) - limits.history_keep)  # Most recent last: keep the tail.
    masks = _action_masks(list(map(_ACTIONS_OF, history)), start)  # [s]
    if masks is None:
        return "a history item repeats an action"
    return CheckedRequest(typed, start, masks)


def check_typed(data: object, limits: ValidationLimits = DEFAULT_LIMITS,
                schemas: Sequence[str] = V1_ONLY) -> CheckedRequest | None:
    """The checked request if `data` (bytes within the byte cap) breaks no rule of the
    contract, else None: then `first_error` names the rule it breaks."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    if len(data) > limits.max_message_bytes:
        return None
    checked = _typed(data, limits, schemas)
    return checked if isinstance(checked, CheckedRequest) else None


# ------------------------------------------------------------ the walker (names the error)

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
                where: str, expected: Mapping[str, str] = EXPECTED_WHEN_MISSING) -> None:
    allowed = tuple(required) + tuple(optional)
    for key in obj:
        if key not in allowed:
            raise _unknown_key(key, prefix, allowed, where)
    for key in required:
        if key not in obj:
            field = _join(prefix, key)
            raise ValidationError(INVALID, MSG_MISSING.format(
                field=field, expected=expected[key]), field=field)


def _int(value: object, field: str, lo: int, hi: int, expected: str, fix: str) -> int:
    if type(value) is int and lo <= value <= hi:  # `type is`: a bool is not an int here.
        return value
    if isinstance(value, float):
        message = MSG_FLOAT_FOR_INT.format(field=field, expected=expected, got=describe(value))
    elif type(value) is not int:
        message = MSG_WRONG_TYPE.format(field=field, expected=expected, got=describe(value))
    else:
        message = MSG_INT_RANGE.format(field=field, expected=expected, got=value, fix=fix)
    raise ValidationError(INVALID, message, field=field)


def _ruled(value: object, field: str, rule: IntRule) -> int:
    return _int(value, field, rule.lo, rule.hi, rule.expected, rule.fix)


def _u64(value: object, field: str) -> int:
    return _ruled(value, field, ID)


def _surface(value: object, field: str, limits: ValidationLimits) -> int:
    return _ruled(value, field, limit_rules(limits).ints["surface"])


def _sized(value: object, field: str, rule: LengthRule, kind: type) -> None:
    if not isinstance(value, kind):
        raise ValidationError(INVALID, MSG_WRONG_TYPE.format(
            field=field, expected=rule.what, got=describe(value)), field=field)
    n = len(value)  # type: ignore[arg-type]
    if not rule.lo <= n <= rule.hi:
        got = f"{n} {rule.unit}" if kind is list else f"{n}"
        raise ValidationError(INVALID, MSG_BAD_LENGTH.format(
            field=field, expected=f"{rule.lo}..{rule.hi} {rule.unit}", got=got, fix=rule.fix),
            field=field)


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


def _walk_items(value: object, name: str, rule: LengthRule, keys: MapRule,
                rules: LimitRules) -> None:
    """Raise the first rule the list `value` or one of its items (in order) breaks."""
    _sized(value, name, rule, list)
    for i, item in enumerate(value):  # type: ignore[arg-type]
        prefix = f"{name}[{i}]"
        if type(item) is not dict:  # Exact types: msgpack makes no subclasses.
            raise ValidationError(INVALID, MSG_WRONG_TYPE.format(
                field=prefix, expected=f"a map ({keys.where})", got=describe(item)),
                field=prefix)
        if item.keys() != keys.exact:
            _check_keys(item, prefix, keys.required, keys.optional, keys.where)
        for key in keys.required:
            if key != "actions":
                value, int_rule = item[key], rules.ints[key]
                if not (type(value) is int and int_rule.lo <= value <= int_rule.hi):
                    _ruled(value, f"{prefix}.{key}", int_rule)  # raises, naming the field
                continue
            error = _action_error_in(item[key], f"{prefix}.actions")
            if error is not None:
                raise error
            # Only a cap below the number of actions is reachable here: a longer list repeats
            # a name, or names an unknown one, and is refused above.
            _sized(item[key], f"{prefix}.actions", rules.actions, list)


def _walk_unique_candidates(candidates: list) -> None:
    first_at: dict[int, int] = {}
    for j, item in enumerate(candidates):
        post_id = item["post_id"]
        if post_id in first_at:
            field = f"candidates[{j}].post_id"
            raise ValidationError(INVALID, MSG_DUPLICATE_CANDIDATE.format(
                field=field, got=post_id, first=f"candidates[{first_at[post_id]}]"),
                field=field)
        first_at[post_id] = j


def _bad_schema(schema: object, schemas: Sequence[str]) -> ValidationError:
    if len(schemas) == 1:
        message = MSG_BAD_SCHEMA.format(field="schema", expected=schemas[0],
                                        got=describe(schema))
    else:
        message = MSG_BAD_SCHEMA_ONE_OF.format(
            field="schema", expected=", ".join(map(repr, schemas)), got=describe(schema))
    return ValidationError(INVALID, message, field="schema")


def _walk(obj: dict, limits: ValidationLimits, schemas: Sequence[str]) -> None:
    # A foreign schema id explains every other difference, so it is reported first.
    schema = obj.get("schema", REQUEST_SCHEMA)  # a missing one is reported as missing
    if not (type(schema) is str and schema in schemas):
        raise _bad_schema(schema, schemas)
    keys, rules = REQUEST_KEYS[schema], limit_rules(limits)
    _check_keys(obj, "", keys.required, keys.optional, keys.where)
    _sized(obj["request_id"], "request_id", rules.request_id, str)
    _ruled(obj["user_id"], "user_id", rules.ints["user_id"])
    _walk_items(obj.get("history", []), "history", rules.history, HISTORY_ITEM, rules)
    _walk_items(obj["candidates"], "candidates", rules.candidates, CANDIDATE, rules)
    _walk_unique_candidates(obj["candidates"])
    for key in NILABLE:
        if obj.get(key) is not None:  # absent or nil: not given
            _ruled(obj[key], key, rules.ints[key])


def _readable_request_id(obj: dict, limits: ValidationLimits) -> str | None:
    value = obj.get("request_id")
    if isinstance(value, str) and 1 <= len(value) <= limits.max_request_id_len:
        return value
    return None


def first_error(obj: object, limits: ValidationLimits = DEFAULT_LIMITS,
                schemas: Sequence[str] = V1_ONLY) -> ValidationError | None:
    """The first rule of the contract that `obj` (a decoded request) breaks, as an error
    with code "invalid" naming its field path; None if it breaks none. The error's
    `request_id` is set whenever `obj` carries a readable one."""
    if not isinstance(obj, dict):
        return ValidationError(INVALID, MSG_NOT_A_MAP.format(got=describe(obj)))
    try:
        _walk(obj, limits, schemas)
    except ValidationError as error:
        error.request_id = _readable_request_id(obj, limits)
        return error
    return None


def _unnamed(obj: dict, refused: CheckedRequest | str,
             limits: ValidationLimits) -> ValidationError:
    """A refusal the walker found no broken rule for. It reads the decoder's rule book (the
    fuzz tests hold the two to the same verdicts); should it still find nothing, the refusal
    stands, in the typed decoder's own words."""
    reason = refused if isinstance(refused, str) else "refused"
    return ValidationError(INVALID, f"the request breaks a rule of the contract ({reason}); "
                           f"{SEE_CONTRACT}", request_id=_readable_request_id(obj, limits))


def _refusal(data: object, limits: ValidationLimits,
             schemas: Sequence[str]) -> ValidationError:
    """Why `check_typed` refused `data`: msgpack's untyped decoder's error (not msgpack, over
    a cap, a repeated key), else the first rule the walker finds broken."""
    try:
        obj = codec.decode_request_bytes(data, limits)  # type: ignore[arg-type]
    except ValidationError as error:
        return error
    return (first_error(obj, limits, schemas)
            or _unnamed(obj, _typed(data, limits, schemas), limits))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the arrays

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


# ----------------------------------------------------------------------------- public entry

def parse_requests(values: Sequence[bytes], limits: ValidationLimits = DEFAULT_LIMITS,
                   schemas: Sequence[str] = V1_ONLY) -> list[RankingRequest | ValidationError]:
    """`parse_request` for a batch of messages, in order, each a request or its error; the
    arrays of the accepted ones are built in one `to_requests`."""
    out: list[RankingRequest | ValidationError | CheckedRequest] = []
    for data in values:
        checked = check_typed(data, limits, schemas)
        out.append(checked if checked is not None else _refusal(data, limits, schemas))
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


def validate_request(obj: object, limits: ValidationLimits = DEFAULT_LIMITS,
                     schemas: Sequence[str] = V1_ONLY) -> RankingRequest:
    """A decoded request (tools, tests) as the worker reads its encoding, without the byte
    and decoder caps: the typed decoder decides, the walker names the error. Raises only
    ValidationError (code "invalid")."""
    try:
        checked = _typed(codec.encode_request(obj), limits, schemas)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # No msgpack form: the walker says why.
        checked = "a value has no msgpack form"
    if isinstance(checked, CheckedRequest):
        return to_requests([checked])[0]
    raise first_error(obj, limits, schemas) or _unnamed(obj, checked, limits)  # type: ignore
