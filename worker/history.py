"""A user's engagement history as one compact bytes value: what the history table stores.

The value is a packed numpy structured array of fixed-width `RECORD`s, oldest first (ordered
by event time, `timestamp_ms`; equal times in arrival order), at most `cap` of them. No Python
object per item: a read is one `np.frombuffer`, a write one `np.insert` and `tobytes`.

Adding is idempotent: an engagement with the post id and timestamp of one already kept is
ignored, so a re-delivered engagement (at-least-once) changes nothing. A late engagement is
inserted at its place in time; when the history is full, one older than everything kept is
dropped (the cap keeps the most recent items by event time).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, MutableMapping

import msgspec
import numpy as np

from worker.codec import user_key
from worker.engagement import Engagement
from worker.request import HISTORY_FROM_TABLE, RankingRequest

# Little-endian and packed (no padding), so the bytes mean the same on every host.
RECORD = np.dtype([("timestamp_ms", "<i8"), ("post_id", "<u8"), ("author_id", "<u8"),
                   ("actions", "<u4"), ("surface", "<u2")])
RECORD_BYTES = RECORD.itemsize  # 30
MAX_SURFACES = 1 << 16  # `surface` is a u16


def items(value: bytes | None) -> np.ndarray:
    """The kept engagements of a stored value (None: an unknown user), oldest first: `[n]`
    RECORD, read-only (a view of `value`)."""
    if not value:
        return np.empty(0, RECORD)
    return np.frombuffer(value, RECORD)


def record_of(engagement: Engagement) -> np.ndarray:
    """One engagement as a `[1]` RECORD array."""
    return np.array([(engagement.timestamp_ms, engagement.post_id, engagement.author_id,
                      engagement.actions, engagement.surface)], RECORD)


_PACK = struct.Struct("<qQQIH")  # one RECORD, field for field
assert _PACK.size == RECORD_BYTES


def add(value: bytes | None, engagement: Engagement, cap: int) -> bytes | None:
    """The stored value with `engagement` added, or None when it changes nothing (a duplicate,
    or older than everything kept in a full history)."""
    t = engagement.timestamp_ms
    # The usual case, an engagement newer than all kept: append bytes, no array needed.
    if not value or _PACK.unpack_from(value, len(value) - RECORD_BYTES)[0] < t:
        record = _PACK.pack(t, engagement.post_id, engagement.author_id, engagement.actions,
                            engagement.surface)
        return ((value or b"") + record)[-cap * RECORD_BYTES:]
    kept = items(value)  # [n]
    times = kept["timestamp_ms"]
    first, after = np.searchsorted(times, t, "left"), np.searchsorted(times, t, "right")
    if np.any(kept["post_id"][first:after] == engagement.post_id):
        return None  # same post at the same time: already applied (a re-delivery)
    if len(kept) >= cap and after == 0:
        return None  # full, and older than everything kept
    merged = np.insert(kept, after, record_of(engagement))  # [n + 1]; after equal times
    return merged[-cap:].tobytes()


# user key (worker.codec.user_key) -> stored value: the worker's Faust table, or a dict offline.
HistoryTable = MutableMapping[bytes, bytes]


def apply(table: HistoryTable, engagement: Engagement, cap: int) -> bool:
    """Adds `engagement` to its user's history in `table`; False when that changed nothing
    (nothing is written then)."""
    key = user_key(engagement.user_id)
    value = add(table.get(key), engagement, cap)
    if value is None:
        return False
    table[key] = value  # a Faust table also writes it to its changelog topic
    return True


def lookup(table: HistoryTable) -> Callable[[int], bytes | None]:
    """user id -> the stored value in `table` (None: unknown user), for the pipeline."""
    return lambda user_id: table.get(user_key(user_id))


class TableLookup:
    """The pipeline's history lookup for a table made after the pipeline: the worker builds
    (and compiles) its pipeline before the Faust app that creates the table. Every user is
    unknown (None: an empty history) until `attach` names how to read the table."""

    def __init__(self) -> None:
        self._read: Callable[[int], bytes | None] | None = None

    def attach(self, read: Callable[[int], bytes | None]) -> None:
        """From now on, `read(user_id)` answers (the table's thread-safe reader)."""
        self._read = read

    def __call__(self, user_id: int) -> bytes | None:
        read = self._read
        return None if read is None else read(user_id)


def with_table_history(request: RankingRequest, value: bytes | None,
                       keep: int) -> RankingRequest:
    """`request` ranked with the table's history: the most recent `keep` (S) items of `value`.

    The one place a RankingRequest is built from table history."""
    kept = items(value)[-keep:]  # [s]
    return msgspec.structs.replace(
        request, history_source=HISTORY_FROM_TABLE,
        history_post_ids=kept["post_id"].astype(np.uint64),  # [s]
        history_author_ids=kept["author_id"].astype(np.uint64),  # [s]
        history_actions=kept["actions"].astype(np.uint32),  # [s] masks, as requests carry them
        history_surfaces=kept["surface"].astype(np.int32))  # [s]
