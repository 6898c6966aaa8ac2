"""History import (``/message/import``): messages stored with the sender and the time they were
given, after the channel's head, pushed to no one and counted as unread by no one.

One ``MessageImport`` is one Raft command and is applied whole or not at all: when any message
is refused, nothing of the command is stored. Each message gets the channel's next seq in the
order given and the group's next message id (ids stay unique and increasing in the group; their
time part is the commit's, the message's ``timestamp_ms`` is the original one). A message whose
(channel, sender, ``client_msg_no``) is already stored, by an import or a send, is answered with
the stored ids and stores nothing: re-importing a batch is harmless.

What is checked is where the history may go, not who may speak now: the channel must exist (as
for a trusted send: groups must be created first) and not be disbanded, and the sender must be
a party of a person or agent channel. Ban, ``send_ban``, deny and allow lists, membership and
rate limits do not apply to what was said before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, ReasonCode

from ..channels import person_parties
from ..command_channels import RED_DOT, is_cmd
from ..ids import next_message_id
from ..pipeline_rules import SYSTEM_UID, request_problem
from ..storage import MessageRecord
from . import conversations, message_ops, permissions
from .context import ApplyContext

MAX_MESSAGES = 1000
"""Messages one import may carry."""
REFUSED_TYPES = frozenset(int(t) for t in (ChannelType.TEMP, ChannelType.LIVE))
"""Channel types with no history to import into: temp channels belong to recipient lists, live
channels store nothing."""


def _refuse(reason: ReasonCode, detail: str) -> pb.MetaResult:
    return pb.MetaResult(reason=reason, detail=detail)


def problem(op: pb.MessageImport, i: int, m: pb.Message) -> tuple[ReasonCode, str] | None:
    """Why message ``i`` cannot be imported into the op's channel as given (the parts that need
    no store), or ``None``. The HTTP handler checks the same before proposing."""
    ctype, cid = op.channel_type, op.channel_id
    if ctype in REFUSED_TYPES or is_cmd(cid):
        return ReasonCode.NOT_SUPPORT_CHANNEL_TYPE, "this channel takes no imported history"
    if not m.client_msg_no:
        return ReasonCode.PAYLOAD_DECODE_ERROR, f"messages[{i}].client_msg_no is required"
    if m.timestamp_ms <= 0:
        return ReasonCode.PAYLOAD_DECODE_ERROR, f"messages[{i}].timestamp must be positive"
    malformed = request_problem(m.client_msg_no, "", "", cid, m.from_uid, m.expire)
    if malformed is not None:
        return ReasonCode.PAYLOAD_DECODE_ERROR, f"messages[{i}]: {malformed}"
    if not m.from_uid:
        return ReasonCode.PAYLOAD_DECODE_ERROR, f"messages[{i}].from_uid is required"
    parties: tuple[str, ...] = ()
    if ctype == ChannelType.PERSON:
        try:
            parties = person_parties(cid)
        except ValueError:
            return ReasonCode.PAYLOAD_DECODE_ERROR, "not a person channel id"
    elif ctype == ChannelType.AGENT:
        parties = permissions.agent_parties(cid)
    if parties and m.from_uid not in parties:
        return ReasonCode.NOT_ALLOW_SEND, f"messages[{i}].from_uid is not a party of this channel"
    return None


def apply_import(ctx: ApplyContext, op: pb.MessageImport) -> pb.MetaResult:
    ctype, cid = op.channel_type, op.channel_id
    if not op.messages or len(op.messages) > MAX_MESSAGES:
        return _refuse(ReasonCode.PAYLOAD_DECODE_ERROR, f"1 to {MAX_MESSAGES} messages")
    for i, m in enumerate(op.messages):
        found = problem(op, i, m)
        if found is not None:
            return _refuse(*found)
    # The channel's own state, once: as a system send sees it (existence and disband only; the
    # party rules above replace the agent check).
    probe = pb.SendItem(from_uid=SYSTEM_UID, channel_id=cid, channel_type=ctype, trusted=True)
    reason = permissions.send_permission(ctx.store, probe)
    if reason != ReasonCode.SUCCESS:
        return _refuse(reason, f"history cannot be imported into this channel: {reason.name}")

    head = ctx.store.head_seq(ctype, cid)
    last_id = ctx.store.last_message_id()
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    out: list[dict[str, Any]] = []
    for m in op.messages:
        key = (m.from_uid, m.client_msg_no)
        earlier = seen.get(key) or ctx.store.get_dedupe(ctype, cid, *key)
        if earlier is not None:
            out.append({"message_id": earlier[0], "message_seq": earlier[1], "duplicate": 1})
            continue
        head += 1
        last_id = next_message_id(last_id, ctx.time_ms, ctx.group)
        record = MessageRecord(
            message_id=last_id,
            message_seq=head,
            timestamp_ms=m.timestamp_ms,
            channel_id=cid,
            channel_type=ctype,
            from_uid=m.from_uid,
            client_msg_no=m.client_msg_no,
            payload=m.payload,
            flags=m.flags & RED_DOT,
            expire=m.expire,
        )
        ctx.wb.append_message(record)
        conversations.on_message(ctx, record, imported=True)
        message_ops.on_message(ctx, record)
        seen[key] = (last_id, head)
        out.append({"message_id": last_id, "message_seq": head, "duplicate": 0})
    ctx.wb.set_last_message_id(last_id)
    data = json.dumps({"messages": out}, separators=(",", ":")).encode()
    return pb.MetaResult(reason=ReasonCode.SUCCESS, data=data)


META: dict[str, Callable[[ApplyContext, Any], pb.MetaResult]] = {"message_import": apply_import}
