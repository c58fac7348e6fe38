"""ranking-request.v1 and v2 as msgspec Struct types, for the typed decoder of valid requests.

The types mirror schemas/ranking-request.v1.json and v2 (tests/test_schemas.py keeps the two in
agreement both ways), with the runtime caps of a `ValidationLimits` as their bounds: a decoder
is built once per limits and cached. Decoding with them checks every per-field rule of the
contract in C; the rules a type cannot state (no repeated key, action or candidate post id)
are checked by `worker.validation.check_typed`.
"""

import functools
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from phoenix.actions import ACTION_NAMES
from worker.codec import REQUEST_SCHEMA, REQUEST_SCHEMA_V2

if TYPE_CHECKING:  # validation imports this module; the import is for type hints only.
    from worker.validation import ValidationLimits

TOP_K_MAX = 2**31 - 1  # top_k above the candidate count means "all"; int32 keeps it portable.
EPOCH_MS_MAX = 2**63 - 1  # timestamp_ms / deadline_ms: non-negative signed 64-bit.
ACTIONS_MAX = len(ACTION_NAMES)  # Each action at most once per history item.

# msgspec refuses bounds outside int64, but a msgpack int stops at 2**64-1 anyway, so `ge=1`
# alone is exactly the id range 1..2**64-1.
Id = Annotated[int, Meta(ge=1)]
ActionName = Literal[ACTION_NAMES]  # type: ignore[valid-type]  # The tuple spells the enum.
TopK = Annotated[int, Meta(ge=1, le=TOP_K_MAX)]
EpochMs = Annotated[int, Meta(ge=0, le=EPOCH_MS_MAX)]


@functools.lru_cache(maxsize=32)
def request_type(limits: "ValidationLimits", schema: str = REQUEST_SCHEMA) -> type[Struct]:
    """The request Struct of `schema` (v1, or v2 where history is optional) whose bounds are
    `limits`' caps.

    Bounds are never looser than the untyped decoder's caps either (`codec`'s max_array_len
    is the larger of the two list caps), so what these types accept, that decoder accepts.
    """
    # Built eagerly (no `from __future__ import annotations`): msgspec must see these locals.
    Surface = Annotated[int, Meta(ge=0, le=limits.num_surfaces - 1)]
    actions_max = min(ACTIONS_MAX, max(limits.max_history, limits.max_candidates))

    # gc=False: these objects hold no cycles and die right after decoding.
    class HistoryItem(Struct, forbid_unknown_fields=True, gc=False):
        post_id: Id
        author_id: Id
        # A tuple, not a list: it is the key of validation's cache of action masks as decoded.
        actions: Annotated[tuple[ActionName, ...], Meta(max_length=actions_max)]
        surface: Surface

    class Candidate(Struct, forbid_unknown_fields=True, gc=False):
        post_id: Id
        author_id: Id
        surface: Surface

    class Request(Struct, forbid_unknown_fields=True, gc=False):
        schema: Literal[REQUEST_SCHEMA]  # type: ignore[valid-type]
        request_id: Annotated[str, Meta(min_length=1, max_length=limits.max_request_id_len)]
        user_id: Id
        history: Annotated[list[HistoryItem], Meta(max_length=limits.max_history)]
        candidates: Annotated[list[Candidate], Meta(min_length=1,
                                                    max_length=limits.max_candidates)]
        # UNSET, not None: an absent key and an explicit nil must re-encode to their own sizes.
        top_k: TopK | None | UnsetType = UNSET
        timestamp_ms: EpochMs | None | UnsetType = UNSET
        deadline_ms: EpochMs | None | UnsetType = UNSET

    # v2: the same fields, history optional (absent: the worker's history table fills it in).
    class RequestV2(Request, kw_only=True):
        schema: Literal[REQUEST_SCHEMA_V2]  # type: ignore[valid-type]
        history: Annotated[list[HistoryItem], Meta(max_length=limits.max_history)
                           ] | UnsetType = UNSET

    return {REQUEST_SCHEMA: Request, REQUEST_SCHEMA_V2: RequestV2}[schema]


@functools.lru_cache(maxsize=32)
def decoder(limits: "ValidationLimits", schema: str = REQUEST_SCHEMA) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(request_type(limits, schema))


ENCODER = msgspec.msgpack.Encoder()  # Thread-safe: each call writes its own buffer.
