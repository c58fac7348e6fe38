"""msgpack bytes <-> maps: the encoders of the messages the worker writes (results, dead
letters; requests and engagements for producers and tests), and an untyped decoder that is safe
on hostile bytes. Which maps are valid is `worker.wire`'s business; this module only moves
bytes. `decode_request_bytes` reads what the typed decoder refused (so that
`worker.validation` can name why) and engagements; `decode_message` reads results and dead
letters for viewers and tests.

Safety of `decode_request_bytes`, in the order the checks run:
  1. the byte cap is checked on `len(data)` before the parser sees a byte;
  2. msgpack's C unpacker is given per-object caps (array/map lengths, str/bin bytes, no ext
     types), which it checks on each header *before* allocating the list/dict/str it announces,
     so a 5-byte message claiming 4 billion items fails at once instead of allocating;
  3. nesting is bounded by the C unpacker's fixed parser stack (StackError), and every decoded
     object costs at least one input byte, so the byte cap bounds the total object count;
  4. map keys must be str (strict_map_key) and may appear only once per map; extension types
     (msgpack timestamps included) are refused.
Nothing is ever evaluated or unpickled: msgpack builds only nil/bool/int/float/str/bytes/list/dict.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

import msgpack
import msgspec
import numpy as np

from phoenix.actions import ACTION_NAMES
from worker.errors import (
    DEAD_LETTER_CODES,
    MSG_DECODER_CAP,
    MSG_DUPLICATE_KEY,
    MSG_NOT_A_MAP,
    MSG_NOT_MSGPACK,
    MSG_TOO_MANY_BYTES,
    INVALID,
    NOT_MSGPACK,
    TOO_LARGE,
    ValidationError,
    WorkerError,
    describe,
)
from worker.request import RankingRequest
from worker.wire import (DEAD_LETTER_SCHEMA, RESULT_SCHEMA, RESULT_SCHEMA_V2, RESULT_SCHEMAS,
                         U64_MAX, ValidationLimits)

MAX_MAP_KEYS = 32  # The widest map in the request contract has 8 keys; room for clear errors.
MIN_STR_BYTES = 64  # Keys and action names must always fit, whatever the request id cap.
MESSAGE_DECODE_MAX_BYTES = 64 * 1024 * 1024  # Default cap for results/dead letters (viewers).
DEAD_LETTER_MESSAGE_CHARS = 2000  # Error messages (e.g. a model traceback line) are cut here.
# A dead letter keeps the whole original up to the request byte cap. Over it, only this prefix
# (enough to find the producer: schema, request id, user id come first), so a dead letter of
# any record the broker accepts still fits the worker's producer.
ORIGINAL_PREFIX_BYTES = 64 * 1024
# What a `publish_failed` dead letter keeps: it must pass whatever refused the full answer.
MINIMAL_ORIGINAL_BYTES = 1024
# Room a published message needs besides its value: the dead letter's other fields (message,
# request id, source) and Kafka's record and batch headers. The producer's size cap is the
# request byte cap plus this.
PUBLISH_HEADROOM_BYTES = 64 * 1024
# Kafka's per-record and per-batch headers plus the key, within that headroom.
RECORD_OVERHEAD_BYTES = 1024


def publish_cap(max_message_bytes: int) -> int:
    """The producer's size cap (max_request_size) for a worker whose request cap is
    `max_message_bytes`: every result and dead letter it builds fits under it."""
    return max_message_bytes + PUBLISH_HEADROOM_BYTES

# msgpack reports per-object cap violations as a plain ValueError "N exceeds max_X_len(M)".
_CAP_EXCEEDED = re.compile(r"exceeds max_\w+_len")


def _reject_ext(code: int, data: bytes) -> None:
    """ext_hook: extension types (even empty ones, which pass max_ext_len=0) are refused."""
    raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
        reason=f"msgpack extension type {code} is not accepted; times are integer epoch ms"))


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
    """object_pairs_hook: build the dict, refusing duplicate keys (last-one-wins hides data)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise ValidationError(INVALID, MSG_DUPLICATE_KEY.format(key=repr(key)[:80]))
            seen.add(key)
    return result


@functools.lru_cache(maxsize=32)
def _request_unpack_kwargs(limits: ValidationLimits) -> dict:
    str_bytes = max(4 * limits.max_request_id_len, MIN_STR_BYTES)  # UTF-8: <= 4 bytes a char.
    return dict(
        raw=False,  # str -> str (strict UTF-8), bin -> bytes
        strict_map_key=True,  # keys: str or bytes only (bytes then fail validation by name)
        use_list=True,
        object_pairs_hook=_unique_keys,
        max_str_len=str_bytes,
        # Requests contain no binaries; small ones are decoded so validation can say "got bytes".
        max_bin_len=str_bytes,
        max_array_len=limits.max_list_len,
        max_map_len=MAX_MAP_KEYS,
        max_ext_len=0,  # No extension types (timestamps included) ...
        ext_hook=_reject_ext,  # ... not even zero-length ones.
    )


def _decoder_failure(exc: Exception, limits: ValidationLimits) -> ValidationError:
    if "max_ext_len" in str(exc):
        return ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
            reason="msgpack extension types are not accepted; times are integer epoch ms"))
    if isinstance(exc, msgpack.StackError) or _CAP_EXCEEDED.search(str(exc)):
        reason = "nested too deeply" if isinstance(exc, msgpack.StackError) else str(exc)
        kw = _request_unpack_kwargs(limits)
        return ValidationError(TOO_LARGE, MSG_DECODER_CAP.format(
            reason=reason, max_array=kw["max_array_len"], max_map=kw["max_map_len"],
            max_str=kw["max_str_len"]))
    if isinstance(exc, msgpack.ExtraData):
        reason = "bytes follow the first msgpack object"
    elif isinstance(exc, msgpack.FormatError):
        reason = "a byte that starts no msgpack type (0xc1)"
    elif "incomplete input" in str(exc):
        reason = "the bytes end before the msgpack object does (truncated)"
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"a str that is not valid UTF-8: {exc.reason} at byte {exc.start}"
    else:
        reason = str(exc) or type(exc).__name__
    return ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(reason=reason))


def decode_request_bytes(data: bytes, limits: ValidationLimits) -> dict:
    """Decode one request message into a dict, enforcing every cap before allocating.

    Raises only ValidationError: code "too_large" (byte cap, list/map/str/bin caps, nesting),
    "not_msgpack" (empty, truncated, trailing bytes, bad UTF-8, ext types, non-str keys) or
    "invalid" (not a map at the top, duplicate keys).
    """
    if data is None:
        raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
            reason="the record value is null (a tombstone)"))
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
            reason=f"expected bytes, got {type(data).__name__}"))
    size = len(data)
    if size > limits.max_message_bytes:
        raise ValidationError(TOO_LARGE, MSG_TOO_MANY_BYTES.format(
            size=size, cap=limits.max_message_bytes, max_history=limits.max_history,
            max_candidates=limits.max_candidates, keep=limits.history_keep))
    if size == 0:
        raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(reason="the message is empty"))
    try:
        obj = msgpack.unpackb(data, **_request_unpack_kwargs(limits))
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        # ValueError covers ExtraData, FormatError, StackError, UnicodeDecodeError, caps,
        # truncation and non-str keys; TypeError/OverflowError are listed defensively.
        raise _decoder_failure(exc, limits) from None
    if not isinstance(obj, dict):
        raise ValidationError(INVALID, MSG_NOT_A_MAP.format(got=describe(obj)))
    return obj


def _to_builtin(obj: Any) -> Any:
    """msgpack `default` hook: numpy scalars become Python numbers; anything else is a bug."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):
        raise OverflowError(f"int {obj} is outside msgpack's range -2**63..2**64-1")
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack; convert it to "
                    "int/float/str/bytes/list/dict first")


# msgspec writes the same bytes as msgpack.packb(use_bin_type=True) in about half the time.
_ENCODER = msgspec.msgpack.Encoder(enc_hook=_to_builtin)


def _pack(obj: dict) -> bytes:
    return _ENCODER.encode(obj)


# One ranked candidate of a result as the encoder takes it: structs encode to exactly the maps
# the result schema describes (fields in this order), and filling one from a row's values is
# several times cheaper than building the two dicts per candidate.
Probabilities = msgspec.defstruct("Probabilities", [(name, float) for name in ACTION_NAMES],
                                  gc=False)
RankedCandidate = msgspec.defstruct(
    "RankedCandidate", [("post_id", int), ("author_id", int), ("score", float),
                        ("probabilities", Probabilities)], gc=False)


def encode_request(request: dict) -> bytes:
    """Encode a ranking request dict (producers, tests). It is not validated here."""
    return _pack(request)


def encode_result(result: dict) -> bytes:
    """Encode a ranking-result.v1 or .v2 dict (numpy scalars allowed; arrays are not)."""
    if result.get("schema") not in RESULT_SCHEMAS:
        raise ValueError(f"a result must carry schema={RESULT_SCHEMA!r} (or "
                         f"{RESULT_SCHEMA_V2!r}), got {result.get('schema')!r}")
    return _pack(result)


def build_result(request: RankingRequest, order: np.ndarray, scores: np.ndarray,
                 probabilities: np.ndarray, *, model_version: str, worker_id: str,
                 timings: dict[str, float], produced_at_ms: int) -> dict:
    """The ranking-result.v1 dict: the request's candidates in `order` (best first, `[c]`
    candidate indices), cut to its top_k, with their final `scores` `[c]` and per-action
    `probabilities` `[c, A]`; `timings` in ms, rounded to microseconds. Ranked entries are
    `RankedCandidate` structs, which `encode_result` writes as the schema's maps. A v2
    request gets a ranking-result.v2: the same, plus where its history came from and how many
    items the model used."""
    order = order[: request.top_k] if request.top_k else order  # [k]
    ranked = [
        RankedCandidate(post, author, score, Probabilities(*probs))
        for post, author, score, probs in zip(
            request.candidate_post_ids[order].tolist(),
            request.candidate_author_ids[order].tolist(),
            scores[order].tolist(), probabilities[order].tolist())
    ]
    result = {
        "schema": RESULT_SCHEMA, "request_id": request.request_id,
        "user_id": request.user_id, "model_version": model_version,
        "worker_id": worker_id, "ranked": ranked,
        "timings": {name: round(ms, 3) for name, ms in timings.items()},
        "request_timestamp_ms": request.timestamp_ms,
        "produced_at_ms": produced_at_ms,
    }
    if request.version >= 2:
        result.update(schema=RESULT_SCHEMA_V2, history_source=request.history_source,
                      history_items=request.num_history)
    return result


def build_dead_letter(original: bytes | None, *, topic: str, partition: int, offset: int,
                      code: str, message: str, field: str | None = None,
                      request_id: str | None = None, time_ms: int | None = None,
                      keep_bytes: int | None = None) -> dict:
    """The dead-letter.v2 dict. A null record value is kept as empty bytes; an original longer
    than `keep_bytes` (None: no limit) is cut to that prefix, its full size recorded."""
    if code not in DEAD_LETTER_CODES:
        raise ValueError(f"dead-letter code must be one of {DEAD_LETTER_CODES}, got {code!r}")
    if len(message) > DEAD_LETTER_MESSAGE_CHARS:
        message = message[:DEAD_LETTER_MESSAGE_CHARS] + "..."
    original = original if original is not None else b""
    truncated = keep_bytes is not None and len(original) > keep_bytes
    return {
        "schema": DEAD_LETTER_SCHEMA,
        "original": bytes(original[:keep_bytes] if truncated else original),
        "original_size": len(original),
        "original_truncated": truncated,
        "source": {"topic": topic, "partition": int(partition), "offset": int(offset)},
        "error": {"code": code, "message": message, "field": field},
        "request_id": request_id,
        "time_ms": int(time.time() * 1000) if time_ms is None else int(time_ms),
    }


def encode_dead_letter(original: bytes | None, *, topic: str, partition: int, offset: int,
                       code: str, message: str, field: str | None = None,
                       request_id: str | None = None, time_ms: int | None = None,
                       keep_bytes: int | None = None) -> bytes:
    """Encode a dead-letter.v2 message; `original` travels as a msgpack bin, untouched up to
    `keep_bytes`."""
    return _pack(build_dead_letter(original, topic=topic, partition=partition, offset=offset,
                                   code=code, message=message, field=field,
                                   request_id=request_id, time_ms=time_ms,
                                   keep_bytes=keep_bytes))


def dead_letter_from_error(error: WorkerError, original: bytes | None, *, topic: str,
                           partition: int, offset: int, request_id: str | None = None,
                           time_ms: int | None = None, keep_bytes: int | None = None) -> bytes:
    """Encode the dead letter for a WorkerError that has a dead-letter code."""
    if error.code is None:
        raise ValueError(f"{type(error).__name__} has no dead-letter code; "
                         "its policy is not to dead-letter")
    return encode_dead_letter(
        original, topic=topic, partition=partition, offset=offset, code=error.code,
        message=str(error), field=getattr(error, "field", None),
        request_id=request_id if request_id is not None else getattr(error, "request_id", None),
        time_ms=time_ms, keep_bytes=keep_bytes)


def original_keep_bytes(size: int, max_message_bytes: int) -> int:
    """How much of an original of `size` bytes a dead letter keeps: all of it when it is
    within the request byte cap, else the first `ORIGINAL_PREFIX_BYTES`."""
    return size if size <= max_message_bytes else ORIGINAL_PREFIX_BYTES


def decode_message(data: bytes, max_bytes: int = MESSAGE_DECODE_MAX_BYTES) -> dict:
    """Decode a result or dead letter (viewers, tests). Raises ValidationError like requests."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
            reason="expected non-empty bytes"))
    if len(data) > max_bytes:
        raise ValidationError(TOO_LARGE, f"the message is {len(data)} bytes, over the "
                              f"{max_bytes}-byte cap of decode_message; raise max_bytes")
    try:
        # unpackb bounds every length by len(data) when no explicit cap is given.
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0,
                             ext_hook=_reject_ext)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        raise ValidationError(NOT_MSGPACK, MSG_NOT_MSGPACK.format(
            reason=str(exc) or type(exc).__name__)) from None
    if not isinstance(obj, dict):
        raise ValidationError(INVALID, MSG_NOT_A_MAP.format(got=describe(obj)))
    return obj


def user_key(user_id: int) -> bytes:
    """The Kafka message key of a request and its result: the user id, 8 bytes big-endian."""
    if type(user_id) is not int and not isinstance(user_id, np.integer):
        raise TypeError(f"user_id must be an int, got {type(user_id).__name__}")
    user_id = int(user_id)
    if not 1 <= user_id <= U64_MAX:
        raise ValueError(f"user_id must be in 1..2**64-1, got {user_id}")
    return user_id.to_bytes(8, "big")

