"""Looking messages up by id, by ``client_msg_no`` and the last message of a channel.

The message-id index lives in the ``msgx`` column family under the prefix ``I`` (the other
prefixes of ``msgx`` belong to the message operations): ``I`` + message id (8 bytes, big-endian)
-> channel type (1 byte), seq (8 bytes), channel id (UTF-8). It is written at apply in the same
write batch as the message, so an id that a send answered is always found on the group's leader.
A message id names its slot group (``ids.next_message_id``), so a lookup by id goes straight
to that group.
"""

from __future__ import annotations

import struct
from typing import Any

from ..storage import MessageRecord, Store
from . import message_ops
from .context import ApplyContext

_PREFIX = b"I"
_VALUE = struct.Struct(">BQ")
_ID = struct.Struct(">q")
_GROUP_SHIFT = 12
_GROUP_MASK = (1 << 10) - 1
MAX_IDS = 1000
"""Message ids in one lookup (``POST /messages``)."""


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


def _present(store: Store, records: list[MessageRecord], viewer: str) -> list[dict[str, Any]]:
    return message_ops.present(store, records, viewer) if records else []


def _by_ids(store: Store, q: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored messages among ``ids`` (missing ones are left out), in the order asked."""
    records = []
    for mid in q["ids"][:MAX_IDS]:
        where = locate(store, int(mid))
        if where is None:
            continue
        record = store.get_message(*where)
        # A message removed since (retention) leaves its index entry behind: not found.
        if record is not None and record.message_id == int(mid):
            records.append(record)
    return _present(store, records, str(q.get("login_uid", "")))


def _by_client_msg_no(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    found = store.get_dedupe(ctype, cid, str(q["from_uid"]), str(q["client_msg_no"]))
    if found is None:
        return None
    record = store.get_message(ctype, cid, found[1])
    if record is None:
        return None
    presented = _present(store, [record], str(q.get("login_uid", "")))
    return presented[0] if presented else None


def _last_message(store: Store, q: dict[str, Any]) -> dict[str, Any] | None:
    ctype, cid = int(q["channel_type"]), str(q["channel_id"])
    head = store.head_seq(ctype, cid)
    record = store.get_message(ctype, cid, head) if head else None
    if record is None:
        return None
    presented = _present(store, [record], str(q.get("login_uid", "")))
    return presented[0] if presented else None


QUERIES = {
    "messages_by_id": _by_ids,
    "message_by_client_msg_no": _by_client_msg_no,
    "last_message": _last_message,
}
