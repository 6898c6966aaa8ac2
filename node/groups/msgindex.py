"""The message-id index: where a message id is stored.

The message-id index lives in the ``msgx`` column family under the prefix ``I`` (the other
prefixes of ``msgx`` belong to the message operations): ``I`` + message id (8 bytes, big-endian)
-> channel type (1 byte), seq (8 bytes), channel id (UTF-8). It is written at apply in the same
write batch as the message, so an id that a send answered is always found on the group's leader.
A message id names its slot group (``ids.next_message_id``), so a lookup by id goes straight
to that group. The queries that use it (``/messages``, by ``client_msg_no``, a channel's last
message) are in ``message_reads.py``.
"""

from __future__ import annotations

import struct

from ..storage import MessageRecord, Store
from .context import ApplyContext

_PREFIX = b"I"
_VALUE = struct.Struct(">BQ")
_ID = struct.Struct(">q")
_GROUP_SHIFT = 12
_GROUP_MASK = (1 << 10) - 1
MAX_IDS = 1000
"""Message ids in one lookup (``POST /messages``, ``message_reads``)."""


def group_of_message_id(message_id: int) -> int:
    """The slot group that stored ``message_id`` (bits 12-21 of the id)."""
    return (message_id >> _GROUP_SHIFT) & _GROUP_MASK


def _key(message_id: int) -> bytes:
    return _PREFIX + _ID.pack(message_id)


def index_message(ctx: ApplyContext, record: MessageRecord) -> None:
    value = _VALUE.pack(record.channel_type, record.message_seq) + record.channel_id.encode()
    ctx.wb.put_raw("msgx", _key(record.message_id), value)


def forget_message(ctx: ApplyContext, record: MessageRecord) -> None:
    """Drop the index entry of a message that is being erased (retention, expiry)."""
    ctx.wb.delete_raw("msgx", _key(record.message_id))


def locate(store: Store, message_id: int) -> tuple[int, str, int] | None:
    """(channel type, channel id, seq) of a stored message id, or ``None``."""
    if not 0 <= message_id < 1 << 63:
        return None
    raw = store.get_raw("msgx", _key(message_id))
    if raw is None:
        return None
    ctype, seq = _VALUE.unpack_from(raw)
    return int(ctype), raw[_VALUE.size :].decode(), int(seq)
