"""Message ids: Snowflake-shaped 63-bit integers, milliseconds since ``EPOCH_MS`` in the high
bits, then the slot group id (10 bits) and a counter (12 bits). They are computed at apply from
the command's time and the group's last id (``next_message_id``), so every replica derives the
same id and ids of different groups never collide.
"""

import itertools
import time

EPOCH_MS = 1_700_000_000_000  # 2023-11-14; leaves ~69 years of range
_ID_SEQ_BITS = 12
_ID_GROUP_BITS = 10
_STAMP_SHIFT = _ID_SEQ_BITS + _ID_GROUP_BITS


def next_message_id(last_id: int, time_ms: int, group: int) -> int:
    """Snowflake-shaped ids, unique per group and increasing: milliseconds, group id, counter.

    Derived only from the previous id and the command's time, so every replica computes the
    same one."""
    stamp = max(time_ms - EPOCH_MS, last_id >> _STAMP_SHIFT)
    counter = (last_id & ((1 << _ID_SEQ_BITS) - 1)) + 1 if stamp == last_id >> _STAMP_SHIFT else 0
    if counter >> _ID_SEQ_BITS:
        stamp, counter = stamp + 1, 0  # 4096 ids in one millisecond: borrow the next one
    return (stamp << _STAMP_SHIFT) | (group << _ID_SEQ_BITS) | counter


def committed_ms(message_id: int) -> int:
    """When the message with this id was committed (the leader's clock, in ms): for an imported
    message this differs from its timestamp, which is the original one."""
    return (message_id >> _STAMP_SHIFT) + EPOCH_MS


ONLINE_GROUP_BITS = 1023
"""The group field of ids for messages that are never stored (commands pushed online only):
no slot group has this id, so they never collide with stored messages."""

_online_counter = itertools.count()


def online_message_id() -> int:
    """An id for a message pushed online only (``message_seq`` 0). Unique within this process
    per millisecond up to 4096 ids; such messages are not looked up by id."""
    ms = int(time.time() * 1000) - EPOCH_MS
    return (ms << 22) | (ONLINE_GROUP_BITS << 12) | (next(_online_counter) & 0xFFF)
