"""Command (sync_once) messages: a queue per user in each slot group, with a cursor per device.

When a message is stored in a command twin (``<channel>____cmd``), apply appends a pointer to it
to the queue of each recipient in the same slot group, at the next position of that user's
queue there. ``/message/sync`` reads the pending part of every group's queue (a scatter-gather)
and ``/message/syncack`` moves a device's cursor in one group. Why per group and not one
sequence per user: see ``docs/messaging.md`` ("Command messages").

Positions are shown to clients as one number, ``position << GROUP_BITS | group``, so that an ack
names the group whose cursor it moves.

Layout of the ``cmdq`` column family (uids never contain NUL):

* ``h <uid> NUL``                -> last position of the user's queue (8 bytes)
* ``q <uid> NUL <position:8>``   -> group (2) channel_type (1) message_seq (8) channel_id
* ``c <uid> NUL <device_flag:1>`` -> acknowledged position of that device (8 bytes)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ReasonCode

from ..channels import recipients
from ..command_channels import source_of
from ..storage import MessageRecord, Store
from ..storage.keys import SEP, pack_seq, unpack_seq
from . import views
from .context import ApplyContext

CF = "cmdq"
GROUP_BITS = 9
"""Enough for group ids 1..256 (``cluster.groups`` <= 256)."""
MAX_PENDING = 10_000
"""Entries kept per user and group: past this the oldest is dropped even if unacknowledged (a
device that never syncs must not grow a queue without bound)."""
DEVICE_FLAGS = (0, 1, 2)
_ENTRY = struct.Struct(">HBQ")


def encode_position(position: int, group: int) -> int:
    return (position << GROUP_BITS) | group


def decode_position(value: int) -> tuple[int, int]:
    """(position, group) of a number made by ``encode_position``."""
    return value >> GROUP_BITS, value & ((1 << GROUP_BITS) - 1)


def _user(uid: str) -> bytes:
    return uid.encode() + SEP


def _head_key(uid: str) -> bytes:
    return b"h" + _user(uid)


def _entry_key(uid: str, position: int) -> bytes:
    return b"q" + _user(uid) + pack_seq(position)


def _cursor_key(uid: str, device_flag: int) -> bytes:
    return b"c" + _user(uid) + bytes([device_flag & 0xFF])


def _read_int(ctx: ApplyContext, key: bytes) -> int:
    cached = ctx.cache.get((CF, key))
    if cached is not None:
        return int(cached)
    raw = ctx.store.get_raw(CF, key)
    return 0 if raw is None else unpack_seq(raw)


def _write_int(ctx: ApplyContext, key: bytes, value: int) -> None:
    ctx.cache[(CF, key)] = value
    ctx.wb.put_raw(CF, key, pack_seq(value))


def enqueue(ctx: ApplyContext, record: MessageRecord, uids: Iterable[str]) -> None:
    """Runs in apply for a message stored in a command twin: queue it for each recipient."""
    value = (
        _ENTRY.pack(ctx.group, record.channel_type, record.message_seq) + record.channel_id.encode()
    )
    for uid in uids:
        position = _read_int(ctx, _head_key(uid)) + 1
        _write_int(ctx, _head_key(uid), position)
        ctx.wb.put_raw(CF, _entry_key(uid, position), value)
        if position > MAX_PENDING:
            ctx.wb.delete_raw(CF, _entry_key(uid, position - MAX_PENDING))


def recipients_of(store: Store, item: pb.SendItem, channel_id: str) -> list[str]:
    """Whose queues a command message stored in ``channel_id`` (a twin) goes to: the explicit
    list, else the source channel's parties or subscribers except the sender."""
    if item.subscribers:
        return list(dict.fromkeys(item.subscribers))
    source = source_of(channel_id)
    subscribers = [] if item.channel_type == 1 else store.subscribers(item.channel_type, source)
    return [u for u in recipients(source, item.channel_type, subscribers) if u != item.from_uid]


def _apply_ack(ctx: ApplyContext, op: pb.CommandAck) -> pb.MetaResult:
    """Move a device's cursor forward (never back, never past the queue), then drop the entries
    that every device flag has acknowledged (a flag that never acknowledged holds them all, up
    to ``MAX_PENDING``)."""
    head = _read_int(ctx, _head_key(op.uid))
    key = _cursor_key(op.uid, op.device_flag)
    cursor = max(_read_int(ctx, key), min(op.position, head))
    _write_int(ctx, key, cursor)
    floor = min(_read_int(ctx, _cursor_key(op.uid, f)) for f in DEVICE_FLAGS)
    for k, _ in ctx.store.prefix_items(CF, b"q" + _user(op.uid), limit=MAX_PENDING):
        if unpack_seq(k[-8:]) > floor:
            break
        ctx.wb.delete_raw(CF, k)
    return pb.MetaResult(reason=ReasonCode.SUCCESS)


def _pending(store: Store, q: dict[str, Any]) -> dict[str, Any]:
    """The user's entries of this group above the device's cursor (and above ``after`` when it
    names this group), oldest first, with the messages they point to."""
    uid = str(q["uid"])
    flag = int(q["device_flag"])
    limit = max(1, int(q["limit"]))
    raw = store.get_raw(CF, _cursor_key(uid, flag))
    cursor = 0 if raw is None else unpack_seq(raw)
    after_pos, after_group = decode_position(int(q.get("after", 0)))
    out: list[dict[str, Any]] = []
    more = False
    for k, v in store.prefix_items(CF, b"q" + _user(uid)):
        position = unpack_seq(k[-8:])
        group, ctype, seq = _ENTRY.unpack_from(v)
        if position <= cursor or (group == after_group and position <= after_pos):
            continue
        if len(out) >= limit:
            more = True
            break
        record = store.get_message(ctype, v[_ENTRY.size :].decode(), seq)
        if record is None:
            continue  # deleted since (retention): nothing left to sync
        out.append(
            {"sync_seq": encode_position(position, group), "message": views.message_json(record)}
        )
    return {"entries": out, "more": more}


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {"command_ack": _apply_ack}
QUERIES: dict[str, Callable[[Store, dict[str, Any]], Any]] = {"cmd_pending": _pending}
