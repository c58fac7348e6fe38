"""The engagement actions the Phoenix ranker predicts, in the model's output order.

This is the one place action names and indices live; everything else imports them.
"""

import numpy as np

ACTION_NAMES: tuple[str, ...] = (
    "favorite",
    "reply",
    "repost",
    "photo_expand",
    "click",
    "profile_click",
    "vqv",  # video quality view
    "share",
    "share_via_dm",
    "share_via_copy_link",
    "dwell",
    "quote",
    "quoted_click",
    "follow_author",
    "not_interested",
    "block_author",
    "mute_author",
    "report",
    "dwell_time",
)

NUM_ACTIONS: int = len(ACTION_NAMES)

ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTION_NAMES)}

# Actions that signal the user did not want the post; the final score weighs them negatively.
NEGATIVE_ACTIONS: frozenset[str] = frozenset(
    {"not_interested", "block_author", "mute_author", "report"}
)

# A set of actions as one integer: bit i set iff the action ACTION_NAMES[i] was taken. Requests
# and stored histories carry these [s] uint32 masks; the model's [.., A] multi-hot is unpacked
# from them once per batch.
ACTION_BIT: dict[str, int] = {name: 1 << i for i, name in enumerate(ACTION_NAMES)}


def multi_hot(masks: np.ndarray) -> np.ndarray:
    """[...] uint32 action masks -> [..., A] float32 multi-hot (bit i -> column i)."""
    masks = np.asarray(masks, dtype="<u4")
    as_bytes = masks.reshape(-1, 1).view(np.uint8)  # [n, 4], least significant byte first
    bits = np.unpackbits(as_bytes, axis=1, count=NUM_ACTIONS, bitorder="little")  # [n, A]
    return bits.astype(np.float32).reshape(masks.shape + (NUM_ACTIONS,))


def action_masks(multi_hot_rows: np.ndarray) -> np.ndarray:
    """[..., A] multi-hot (nonzero = taken) -> [...] uint32 masks: the inverse of `multi_hot`."""
    weights = (np.uint32(1) << np.arange(NUM_ACTIONS, dtype=np.uint32))  # [A]
    return ((np.asarray(multi_hot_rows) != 0) * weights).sum(axis=-1, dtype=np.uint32)
