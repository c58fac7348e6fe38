"""Validate one engagement.v1 message (topic `user-engagements`) into an `Engagement`.

The rules, codes and field paths are the request's (schemas/README.md): the same id, action
and surface checks from `worker.validation`, so a producer sees one style of error for both.
"""

from __future__ import annotations

import dataclasses

from phoenix.actions import ACTION_BIT
from worker import codec
from worker.errors import (INVALID, MSG_BAD_SCHEMA, MSG_NOT_A_MAP, TOO_LARGE, ValidationError,
                           describe)
from worker.validation import _action_error_in, _check_keys, _int, _u64, _surface
from worker.wire import ENGAGEMENT_SCHEMA, EPOCH_MS_MAX, EXPECTED_WHEN_MISSING, ValidationLimits

# An engagement is a few dozen bytes (all 19 action names: ~250); anything near this is not one.
ENGAGEMENT_MAX_BYTES = 4096

_REQUIRED = ("schema", "user_id", "post_id", "author_id", "actions", "surface", "timestamp_ms")
_EXPECTED = {**EXPECTED_WHEN_MISSING,
             "schema": f"the string {ENGAGEMENT_SCHEMA!r}",
             "timestamp_ms": f"an integer epoch time in milliseconds, 0..{EPOCH_MS_MAX}"}


@dataclasses.dataclass(frozen=True)
class Engagement:
    """One user's engagement with one post, as the history table stores it."""

    user_id: int  # 1..2**64-1; also the record key
    post_id: int  # 1..2**64-1
    author_id: int  # 1..2**64-1
    actions: int  # bit mask: bit i = phoenix.actions.ACTION_NAMES[i]
    surface: int  # 0..V-1
    timestamp_ms: int  # event time, epoch ms: orders the user's history


def _action_mask(value: object) -> int:
    error = _action_error_in(value, "actions")
    if error is not None:
        raise error
    return sum(map(ACTION_BIT.__getitem__, value))  # distinct names: a sum is an OR


def validate_engagement(obj: object, limits: ValidationLimits) -> Engagement:
    """Check a decoded engagement; raises ValidationError(code="invalid", field=<path>) on the
    first broken rule, in the order of schemas/README.md."""
    if not isinstance(obj, dict):
        raise ValidationError(INVALID, MSG_NOT_A_MAP.format(got=describe(obj)))
    schema = obj.get("schema", ENGAGEMENT_SCHEMA)  # a missing one is reported as missing
    if not (type(schema) is str and schema == ENGAGEMENT_SCHEMA):
        raise ValidationError(INVALID, MSG_BAD_SCHEMA.format(
            field="schema", expected=ENGAGEMENT_SCHEMA, got=describe(schema)), field="schema")
    _check_keys(obj, "", _REQUIRED, (), "an engagement", _EXPECTED)
    return Engagement(
        user_id=_u64(obj["user_id"], "user_id"),
        post_id=_u64(obj["post_id"], "post_id"),
        author_id=_u64(obj["author_id"], "author_id"),
        actions=_action_mask(obj["actions"]),
        surface=_surface(obj["surface"], "surface", limits),
        timestamp_ms=_int(obj["timestamp_ms"], "timestamp_ms", 0, EPOCH_MS_MAX,
                          _EXPECTED["timestamp_ms"],
                          "send the time of the engagement in epoch milliseconds"))


def parse_engagement(data: bytes | None, limits: ValidationLimits) -> Engagement:
    """Decode and validate one engagement message. Raises only ValidationError."""
    if data is not None and len(data) > ENGAGEMENT_MAX_BYTES:
        raise ValidationError(TOO_LARGE, f"the engagement is {len(data)} bytes, over the "
                              f"{ENGAGEMENT_MAX_BYTES}-byte cap; send one engagement per "
                              "message")
    return validate_engagement(codec.decode_request_bytes(data, limits), limits)


def encode_engagement(engagement: dict) -> bytes:
    """Encode an engagement.v1 dict (producers, tests). It is not validated here."""
    return codec.encode_request(engagement)
