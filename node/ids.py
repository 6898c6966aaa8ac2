"""Message ids: Snowflake-shaped 63-bit integers, milliseconds since ``EPOCH_MS`` in the high
bits, then the slot group id (10 bits) and a counter (12 bits). They are computed at apply from
the command's time and the group's last id (``groups/machine.next_message_id``), so every
replica derives the same id and ids of different groups never collide.
"""

EPOCH_MS = 1_700_000_000_000  # 2023-11-14; leaves ~69 years of range
