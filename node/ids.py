"""Message ids: Snowflake-shaped 63-bit integers, milliseconds since ``EPOCH_MS`` in the high
bits, then the slot group id (10 bits) and a counter (12 bits). They are computed at apply from
the command's time and the group's last id (``groups/machine.next_message_id``), so every
replica derives the same id and ids of different groups never collide.
"""

import itertools
import time

EPOCH_MS = 1_700_000_000_000  # 2023-11-14; leaves ~69 years of range


ONLINE_GROUP_BITS = 1023
"""The group field of ids for messages that are never stored (commands pushed online only):
no slot group has this id, so they never collide with stored messages."""

_online_counter = itertools.count()


def online_message_id() -> int:
    """An id for a message pushed online only (``message_seq`` 0). Unique within this process
    per millisecond up to 4096 ids; such messages are not looked up by id."""
    ms = int(time.time() * 1000) - EPOCH_MS
    return (ms << 22) | (ONLINE_GROUP_BITS << 12) | (next(_online_counter) & 0xFFF)
