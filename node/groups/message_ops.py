"""Operations on stored messages: revoke, edit, per-user delete, read receipts, retention.
How stored messages are presented to a reader (the state these operations leave, overlaid at
read time) is in ``message_reads.py``.

Every operation is a ``MessageOp`` applied in the channel's slot group, so it is replicated and
decided the same way on every replica: time comes only from ``ctx.time_ms`` and the revoke
window travels in the op. The extras live in column family ``msgx`` (layout in ``msgx.py``);
the stored message record itself is never rewritten, so a revoke or edit is one small write.

Refusals come back as ``MetaResult`` with ``NOT_ALLOW_SEND`` (HTTP 403) or, for a message that
does not exist, ``data`` = {"not_found": ...} (HTTP 404).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode, Setting

from ..storage import MessageRecord, keys
from . import conversations, msgindex, msgx, streams, views
from .context import ApplyContext

Kind = pb.MessageOp.Kind

DELETE_CHUNK = 2000
"""Messages one DELETE_RANGE removes physically; the rest is left for the reclaim task (the
floor hides them at once), so that no command holds up its group for long."""

MAX_SEQS = 1000
"""Seqs one DELETE_FOR_USER / READ_RECEIPT / DELETE_EXPIRED op may name."""


def _ok(data: Any = None) -> pb.MetaResult:
    return pb.MetaResult(reason=ReasonCode.SUCCESS, data=b"" if data is None else msgx.dump(data))


def _refuse(detail: str) -> pb.MetaResult:
    return pb.MetaResult(reason=ReasonCode.NOT_ALLOW_SEND, detail=detail)


def _not_found(op: pb.MessageOp) -> pb.MetaResult:
    what = f"seq {op.message_seqs[0]}" if op.message_seqs else f"id {op.message_id}"
    return pb.MetaResult(
        reason=ReasonCode.SUCCESS,
        detail=f"no message with {what} in this channel",
        data=msgx.dump({"not_found": what}),
    )


# --- finding messages ---------------------------------------------------------------------


def _target(ctx: ApplyContext, op: pb.MessageOp) -> MessageRecord | None:
    """The one message a REVOKE or EDIT names, if it exists and is not deleted or expired."""
    if op.message_seqs:
        r = ctx.store.get_message(op.channel_type, op.channel_id, op.message_seqs[0])
        if r is not None and op.message_id and r.message_id != op.message_id:
            return None
    elif op.message_id:
        r = views.find_by_id(ctx.store, op.channel_type, op.channel_id, op.message_id)
    else:
        return None
    if r is None or views.is_gone(ctx.store, r, ctx.time_ms):
        return None
    return r


# --- apply ----------------------------------------------------------------------------------


def _revoke(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    r = _target(ctx, op)
    if r is None:
        return _not_found(op)
    ck = keys.channel_key(r.channel_type, r.channel_id)
    key = msgx.seq_key(msgx.REVOKE, ck, r.message_seq)
    done = msgx.get_json(ctx.store, key)
    if done is None:
        if not op.admin:
            if op.actor_uid != r.from_uid:
                return _refuse("only the sender or an admin may revoke this message")
            if ctx.time_ms - r.timestamp_ms > op.revoke_window_ms:
                return _refuse(
                    f"the revoke window ({op.revoke_window_ms // 1000} s) has passed; "
                    "only an admin may revoke this message now"
                )
        done = {"revoker": op.actor_uid, "at": ctx.time_ms}
        ctx.wb.put_raw(msgx.CF, key, msgx.dump(done))
    # A second revoke answers what the first one did (idempotent; the notice is deduped by
    # its client_msg_no).
    return _ok(
        {
            "message_id": r.message_id,
            "message_seq": r.message_seq,
            "from_uid": r.from_uid,
            "revoker": done["revoker"],
        }
    )


def _edit(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    r = _target(ctx, op)
    if r is None:
        return _not_found(op)
    ck = keys.channel_key(r.channel_type, r.channel_id)
    if ctx.store.get_raw(msgx.CF, msgx.seq_key(msgx.REVOKE, ck, r.message_seq)) is not None:
        return _refuse("a revoked message cannot be edited")
    if not op.admin and op.actor_uid != r.from_uid:
        return _refuse("only the sender or an admin may edit this message")
    key = msgx.seq_key(msgx.EDIT, ck, r.message_seq)
    before = msgx.get_json(ctx.store, key)
    version = 1 if before is None else int(before["version"]) + 1
    ctx.wb.put_raw(
        msgx.CF,
        key,
        msgx.dump(
            {
                "version": version,
                "edited_at": ctx.time_ms,
                "payload": base64.b64encode(op.payload).decode(),
                "editor": op.actor_uid,
            }
        ),
    )
    return _ok(
        {
            "message_id": r.message_id,
            "message_seq": r.message_seq,
            "version": version,
            "edited_at": ctx.time_ms,
            "parties": views.parties(ctx.store, r.channel_type, r.channel_id),
        }
    )


def _delete_for_user(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    ck = keys.channel_key(op.channel_type, op.channel_id)
    head = ctx.store.head_seq(op.channel_type, op.channel_id)
    hidden = sorted({s for s in op.message_seqs[:MAX_SEQS] if 0 < s <= head})
    for seq in hidden:
        ctx.wb.put_raw(msgx.CF, msgx.user_key(msgx.HIDE, ck, seq, op.actor_uid), b"")
    return _ok({"message_seqs": hidden})


def _read_receipt(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    """Record ``actor_uid`` as a reader of those messages that asked for receipts; a reader who
    is not a party, the sender itself and repeated reports are ignored."""
    ck = keys.channel_key(op.channel_type, op.channel_id)
    floor = msgx.floor(ctx.store, ck)
    party = (
        op.actor_uid in views.parties(ctx.store, op.channel_type, op.channel_id)
        if op.channel_type == ChannelType.PERSON
        else ctx.store.is_subscriber(op.channel_type, op.channel_id, op.actor_uid)
    )
    receipts = []
    for seq in sorted(set(op.message_seqs[:MAX_SEQS])):
        r = ctx.store.get_message(op.channel_type, op.channel_id, seq)
        if (
            not party
            or r is None
            or seq <= floor
            or not r.setting & Setting.RECEIPT
            or r.from_uid == op.actor_uid
            or views.is_expired(r, ctx.time_ms)
        ):
            continue
        key = msgx.user_key(msgx.RECEIPT, ck, seq, op.actor_uid)
        if ctx.store.get_raw(msgx.CF, key) is not None:
            continue
        ctx.wb.put_raw(msgx.CF, key, b"")
        readers = len(msgx.users_of(ctx.store, msgx.RECEIPT, ck, seq)) + 1
        receipts.append(
            {
                "message_id": r.message_id,
                "message_seq": seq,
                "from_uid": r.from_uid,
                "read_count": readers,
            }
        )
    return _ok({"receipts": receipts})


def _erase(ctx: ApplyContext, r: MessageRecord, ck: bytes) -> None:
    """Remove one message and everything kept about it (its space is reclaimed)."""
    seq = r.message_seq
    ctx.wb.delete_raw("messages", keys.message_key(ck, seq))
    msgindex.forget_message(ctx, r)
    conversations.forget_mentions(ctx, r)
    if r.client_msg_no:
        ctx.wb.delete_raw("dedupe", keys.dedupe_key(ck, r.from_uid, r.client_msg_no))
    for prefix in (msgx.REVOKE, msgx.EDIT):
        ctx.wb.delete_raw(msgx.CF, msgx.seq_key(prefix, ck, seq))
    for prefix in (msgx.HIDE, msgx.RECEIPT):
        for uid in msgx.users_of(ctx.store, prefix, ck, seq):
            ctx.wb.delete_raw(msgx.CF, msgx.user_key(prefix, ck, seq, uid))
    if r.expire:
        ctx.wb.delete_raw(msgx.CF, msgx.expiry_key(r.timestamp_ms + r.expire * 1000, ck, seq))
    if r.setting & Setting.STREAM:
        streams.forget(ctx, ck, seq)


def _delete_range(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    """Delete every message at or below a seq. The head stays, so seqs are never reused; the
    floor hides the range at once and the keys go in chunks of ``DELETE_CHUNK``."""
    if not op.message_seqs:
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail="DELETE_RANGE needs a seq")
    ck = keys.channel_key(op.channel_type, op.channel_id)
    head = ctx.store.head_seq(op.channel_type, op.channel_id)
    floor = max(msgx.floor(ctx.store, ck), min(op.message_seqs[0], head))
    if floor:
        ctx.wb.put_raw(msgx.CF, msgx.FLOOR + ck, keys.pack_seq(floor))
    doomed = ctx.store.messages(op.channel_type, op.channel_id, 1, floor + 1, DELETE_CHUNK + 1)
    more = len(doomed) > DELETE_CHUNK
    doomed = doomed[:DELETE_CHUNK]
    for r in doomed:
        _erase(ctx, r, ck)
    pending = msgx.PENDING + ck
    if more:
        ref = {"channel_id": op.channel_id, "channel_type": op.channel_type}
        ctx.wb.put_raw(msgx.CF, pending, msgx.dump(ref))
    else:
        ctx.wb.delete_raw(msgx.CF, pending)
    return _ok({"floor": floor, "deleted": len(doomed)})


def _delete_expired(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    """Delete those of the named messages that have expired by the command's time: the
    proposer's clock chose them, apply decides (the same way on every replica)."""
    ck = keys.channel_key(op.channel_type, op.channel_id)
    deleted = 0
    for seq in sorted(set(op.message_seqs[:MAX_SEQS])):
        r = ctx.store.get_message(op.channel_type, op.channel_id, seq)
        if r is not None and views.is_expired(r, ctx.time_ms):
            _erase(ctx, r, ck)
            deleted += 1
    return _ok({"deleted": deleted})


def _set_retention(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    key = msgx.RETENTION + keys.channel_key(op.channel_type, op.channel_id)
    if op.retention_days > 0:
        value = {
            "days": op.retention_days,
            "channel_id": op.channel_id,
            "channel_type": op.channel_type,
        }
        ctx.wb.put_raw(msgx.CF, key, msgx.dump(value))
    else:
        ctx.wb.delete_raw(msgx.CF, key)
    return _ok()


_KINDS: dict[int, Callable[[ApplyContext, pb.MessageOp], pb.MetaResult]] = {
    Kind.REVOKE: _revoke,
    Kind.EDIT: _edit,
    Kind.DELETE_FOR_USER: _delete_for_user,
    Kind.READ_RECEIPT: _read_receipt,
    Kind.DELETE_RANGE: _delete_range,
    Kind.DELETE_EXPIRED: _delete_expired,
    Kind.SET_RETENTION: _set_retention,
}


def apply_message_op(ctx: ApplyContext, op: pb.MessageOp) -> pb.MetaResult:
    handler = _KINDS.get(op.kind)
    if handler is None:
        return pb.MetaResult(reason=ReasonCode.SYSTEM_ERROR, detail=f"unknown kind {op.kind}")
    return handler(ctx, op)


def on_message(ctx: ApplyContext, record: MessageRecord) -> None:
    """Runs in apply for every stored message: index its expiry so that the reclaim task
    finds expired messages without scanning."""
    if record.expire:
        ck = keys.channel_key(record.channel_type, record.channel_id)
        deadline = record.timestamp_ms + record.expire * 1000
        ref = {"channel_id": record.channel_id, "channel_type": record.channel_type}
        ctx.wb.put_raw(msgx.CF, msgx.expiry_key(deadline, ck, record.message_seq), msgx.dump(ref))


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {"message": apply_message_op}
