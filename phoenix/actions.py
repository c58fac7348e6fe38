"""The engagement actions the Phoenix ranker predicts, in the model's output order.

This is the one place action names and indices live; everything else imports them.
"""

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
