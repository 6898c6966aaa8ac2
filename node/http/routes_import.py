"""``/message/import``: history stored with its original senders and times, pushed to no one
and counted as unread by no one (``groups/imports.py`` decides in apply). Everything is checked
here before proposing, including the timestamps against this node's clock, so that apply only
sees well-formed messages and needs no clock of its own. See ``docs/api.md``."""

from __future__ import annotations

import json
import time
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

from ..command_channels import is_cmd
from ..groups import imports
from ..pipeline_rules import SYSTEM_UID
from .common import (
    ApiContext,
    RouteTable,
    check_command_size,
    check_id,
    person_or_channel,
)
from .fields import get_int, get_str
from .routes_sends import parse_flags, parse_payload
from .server import ApiError, Request, Response, bad_request

MAX_FUTURE_S = 60
"""How far a timestamp may lie ahead of this node's clock (clocks of two systems differ)."""
_NOT_IMPORTABLE = int(HeaderFlag.NO_PERSIST | HeaderFlag.SYNC_ONCE)
_STATUS = {
    ReasonCode.CHANNEL_NOT_EXIST: 404,
    ReasonCode.DISBAND: 403,
    ReasonCode.NOT_ALLOW_SEND: 403,
    ReasonCode.PAYLOAD_DECODE_ERROR: 400,
    ReasonCode.NOT_SUPPORT_CHANNEL_TYPE: 400,
}


def parse_message(ctx: ApiContext, i: int, raw: Any, channel_type: int, now_s: int) -> pb.Message:
    """``messages[i]`` of the request as the command carries it; 400 names the field."""
    if not isinstance(raw, dict):
        raise bad_request(f"messages[{i}] must be an object")
    try:
        from_uid = get_str(raw, "from_uid")
        if from_uid:
            check_id(from_uid, "from_uid")
        elif channel_type == ChannelType.PERSON:
            raise bad_request("from_uid is required for a person channel")
        client_msg_no = get_str(raw, "client_msg_no", required=True)
        timestamp = get_int(raw, "timestamp", required=True, minimum=1)
        if timestamp > now_s + MAX_FUTURE_S:
            raise bad_request("timestamp (seconds) lies in the future")
        expire = get_int(raw, "expire", minimum=0, maximum=0xFFFFFFFF)
        if expire and timestamp + expire <= now_s:
            raise bad_request("expire: the message expired before it was imported")
        payload = parse_payload(ctx, raw)
        # Without a header: red_dot 1, as /message/send, and no recommended command flags (the
        # history is stored as it was, not turned into commands).
        flags = int(HeaderFlag.RED_DOT)
        if raw.get("header") is not None:
            flags = parse_flags(ctx, raw, payload, red_dot_default=True)
        if flags & _NOT_IMPORTABLE:
            raise bad_request("header: no_persist and sync_once messages are not history")
    except ApiError as e:
        raise bad_request(f"messages[{i}].{e.msg}") from None
    return pb.Message(
        from_uid=from_uid or SYSTEM_UID,
        client_msg_no=client_msg_no,
        timestamp_ms=timestamp * 1000,
        payload=payload,
        flags=flags,
        expire=expire,
    )


async def message_import(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    login_uid = get_str(body, "login_uid")
    if login_uid:
        check_id(login_uid, "login_uid")
    _, canonical, ctype = person_or_channel(body, "login_uid")
    if ctype in imports.REFUSED_TYPES or is_cmd(canonical):
        raise bad_request(f"channel_type {ctype}: this channel takes no imported history")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list")
    if len(raw) > imports.MAX_MESSAGES:
        raise bad_request(f"messages has more than {imports.MAX_MESSAGES} entries")
    now_s = int(time.time())
    op = pb.MessageImport(channel_id=canonical, channel_type=ctype)
    for i, m in enumerate(raw):
        op.messages.append(parse_message(ctx, i, m, ctype, now_s))
        found = imports.problem(op, i, op.messages[i])
        if found is not None:
            raise bad_request(found[1])
    command = pb.MetaOp(message_import=op)
    check_command_size(command)
    result = await ctx.router.meta(canonical, command)
    reason = ReasonCode(result.reason)
    if reason != ReasonCode.SUCCESS:
        status = _STATUS.get(reason, 500)
        msg = result.detail if status != 500 else "history could not be stored"
        raise ApiError(status, msg, reason=int(reason))
    stored = json.loads(result.data)["messages"]
    out = [
        {
            "client_msg_no": m.client_msg_no,
            "message_id": s["message_id"],
            "message_idstr": str(s["message_id"]),
            "message_seq": s["message_seq"],
            "duplicate": s["duplicate"],
        }
        for m, s in zip(op.messages, stored, strict=True)
    ]
    return Response(200, {"messages": out})


ROUTES: RouteTable = (("POST", "/message/import", message_import),)
