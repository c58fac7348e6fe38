"""The worker's exception tree. The class is the policy; code branches on the type (and on
`code`, the dead-letter code), never on message text.

    WorkerError                 root; never raised itself
    ├── ValidationError         the input is bad: dead-letter it, never retry
    ├── RequestError            a valid request that could not be answered
    │   ├── ExpiredError        the deadline or max age passed: dead-letter, never retry
    │   └── ModelError          ranking raised for it: isolate the culprit, dead-letter it
    └── BrokerUnavailableError  the broker stayed unreachable through every retry: give up

Message templates that several call sites share live here, so the wording of a rule is
defined once.
"""

from __future__ import annotations


# Every code a dead letter's `error.code` may carry (schemas/dead-letter.v2.json enumerates them).
NOT_MSGPACK = "not_msgpack"
TOO_LARGE = "too_large"
INVALID = "invalid"
EXPIRED = "expired"
MODEL_ERROR = "model_error"
PUBLISH_FAILED = "publish_failed"  # since dead-letter.v2
DEAD_LETTER_CODES: tuple[str, ...] = (NOT_MSGPACK, TOO_LARGE, INVALID, EXPIRED, MODEL_ERROR,
                                      PUBLISH_FAILED)
VALIDATION_CODES: frozenset[str] = frozenset({NOT_MSGPACK, TOO_LARGE, INVALID})

# Where producers learn the contract; appended to messages that need a pointer, not repeated.
SEE_CONTRACT = "see schemas/README.md"

# Shared message templates (fact, value, fix). Fields: see each `.format` call site.
MSG_NOT_MSGPACK = (
    "the message is not a valid msgpack document ({reason}); send exactly one msgpack map, "
    "strings as str and bytes as bin (use_bin_type=True), " + SEE_CONTRACT
)
MSG_TOO_MANY_BYTES = (
    "the message is {size} bytes, over the {cap}-byte cap; send at most {max_history} history "
    "items and {max_candidates} candidates (only the most recent {keep} history items are used)"
)
MSG_DECODER_CAP = (
    "the message is over a decoder cap ({reason}); lists hold at most {max_array} items, maps "
    "at most {max_map} keys, strings and binaries at most {max_str} bytes, and nesting at most "
    "msgpack's parser depth"
)
MSG_DUPLICATE_KEY = (
    "a map in the message has the key {key} more than once, so its value is ambiguous; "
    "send each key once"
)
MSG_NOT_A_MAP = "the message must be a msgpack map (an object); got {got}; " + SEE_CONTRACT
MSG_MISSING = "{field} is required but missing; add it ({expected}), " + SEE_CONTRACT
MSG_UNKNOWN_KEY = (
    "{field} is not a field of {where}{hint}; remove it or fix its spelling "
    "(allowed: {allowed})"
)
MSG_BIN_KEY = (
    "{field}: the key is a msgpack bin, but keys must be msgpack str (UTF-8); encode strings "
    "as str (Python: msgpack.packb(..., use_bin_type=True))"
)
MSG_WRONG_TYPE = "{field} must be {expected}; got {got}"
MSG_FLOAT_FOR_INT = (
    "{field} must be {expected}; got the float {got}: floats (including NaN and infinity) are "
    "never accepted where an integer is expected, not even 3.0; encode it as a msgpack integer"
)
MSG_INT_RANGE = "{field} must be {expected}; got {got}; {fix}"
MSG_BAD_SCHEMA = (
    "{field} must be the exact string {expected!r}; got {got}; this worker reads only that "
    "version, so send it or route the message to a worker that reads yours"
)
MSG_BAD_SCHEMA_ONE_OF = (
    "{field} must be one of the exact strings {expected}; got {got}; this worker reads only "
    "those versions, so send one of them or route the message to a worker that reads yours"
)
MSG_BAD_LENGTH = "{field} must have {expected}; got {got}; {fix}"
MSG_UNKNOWN_ACTION = (
    "{field} is not a known action name; got {got}{hint}; use one of: {allowed}"
)
MSG_DUPLICATE_ACTION = (
    "{field} repeats the action {got} (already at {first}); list each action at most once"
)
MSG_DUPLICATE_CANDIDATE = (
    "{field} repeats the post id {got} (already at {first}); candidate post ids must be "
    "distinct: drop the duplicate"
)


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""

    code: str | None = None  # The dead-letter code, for errors that end in a dead letter.


class ValidationError(WorkerError):
    """The input message is bad. Dead-letter it; retrying cannot help.

    Attributes:
      code: "not_msgpack" (not decodable), "too_large" (over a byte/length cap before or while
        decoding) or "invalid" (decoded, but breaks a schema or field rule).
      field: path of the offending field, e.g. "candidates[3].post_id"; None for the whole message.
      message: the fact, the offending value and the fix (also `str(error)`).
      request_id: the request id when it could be read from the message, else None.
    """

    def __init__(self, code: str, message: str, field: str | None = None,
                 request_id: str | None = None) -> None:
        if code not in VALIDATION_CODES:
            raise ValueError(f"ValidationError code must be one of {sorted(VALIDATION_CODES)}, "
                             f"got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"ValidationError(code={self.code!r}, field={self.field!r}, {self.message!r})"


class RequestError(WorkerError):
    """A valid request that could not be answered; carries its id for the dead letter."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.field = None


class ExpiredError(RequestError):
    """The request's deadline (or the worker's max age) passed before it could be answered."""

    code = EXPIRED


class ModelError(RequestError):
    """Assembling or ranking this request raised. Split the batch and dead-letter the culprit."""

    code = MODEL_ERROR


class BrokerUnavailableError(WorkerError):
    """The broker stayed unreachable through every retry the caller allowed; it gives up.
    Never dead-lettered: no record is at fault."""


_SHOW_CHARS = 60  # Offending values are quoted up to this length, so messages stay small.


def describe(value: object) -> str:
    """A short, safe description of an input value for an error message.

    Containers are described by size only: quoting a 1 MiB list back into a dead letter would
    repeat the problem in the error topic.
    """
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (booleans are not integers)"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= _SHOW_CHARS else value[:_SHOW_CHARS] + "..."
        return f"the string {text!r}"
    if isinstance(value, (bytes, bytearray)):
        return f"a binary of {len(value)} bytes"
    if isinstance(value, dict):
        return f"a map of {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} items"
    return f"a value of type {type(value).__name__}"
