"""Conversations and unread counts: ``/conversation/sync`` and the
``/conversations/*`` operations. Rows live in their channel's slot group, so a user's list is
gathered from every group; an operation on one conversation is a ``ConversationOp`` committed in
the channel's group."""

from __future__ import annotations

import json
import time
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag

from ..channels import id_problem, person_channel_id, person_parties, view_channel_id
from ..groups.conversations import MAX_RECENTS, NO_CONVERSATION
from ..ids import online_message_id
from ..pipeline_rules import SYSTEM_UID
from .common import OK, ApiContext, RouteTable, check_id, message_resp, meta, person_or_channel
from .fields import get_flag, get_int, get_str
from .server import Request, Response, bad_request

MAX_PAGE_SIZE = 500
UNREAD_CLEAR_CMD = 99
"""WuKongIM's command message type: ``{"type": 99, "cmd": "unreadClear", ...}`` (seed §6.3)."""


def parse_last_msg_seqs(uid: str, raw: str) -> dict[str, int]:
    """``"chanId:chanType:seq|..."`` (person channels by the peer's uid) -> "type:canonical id"
    -> seq. Raises a 400 naming the field on anything malformed."""
    known: dict[str, int] = {}
    for part in filter(None, raw.split("|")):
        fields = part.rsplit(":", 2)
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
            raise bad_request(f"last_msg_seqs: {part!r} is not channel_id:channel_type:seq")
        cid, ctype, seq = fields[0], int(fields[1]), int(fields[2])
        if "@" not in cid and id_problem(cid) is not None:
            raise bad_request(f"last_msg_seqs: bad channel id {cid!r}")
        if ctype == ChannelType.PERSON:
            try:
                # The peer's uid, or an a@b id in either order: stored rows use the canonical one.
                cid = (
                    person_channel_id(*person_parties(cid))
                    if "@" in cid
                    else person_channel_id(uid, cid)
                )
            except ValueError:
                raise bad_request(f"last_msg_seqs: bad channel id {cid!r}") from None
        known[f"{ctype}:{cid}"] = seq
    return known


def _type_list(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise bad_request(f"{name} must be a list of channel types (integers)")
    return list(value)


def unread_clear_command(uid: str, channel_id: str, channel_type: int) -> pb.Message:
    """The online-only command that tells a user's devices to drop a conversation's red dot."""
    payload = {
        "type": UNREAD_CLEAR_CMD,
        "cmd": "unreadClear",
        "param": {"channel_id": channel_id, "channel_type": channel_type},
    }
    return pb.Message(
        message_id=online_message_id(),
        message_seq=0,
        timestamp_ms=int(time.time() * 1000),
        # The user's own person channel: "uid@uid" is presented to the user as channel ``uid``.
        channel_id=person_channel_id(uid, uid),
        channel_type=ChannelType.PERSON,
        from_uid=SYSTEM_UID,
        client_msg_no=f"unreadClear-{online_message_id()}",
        payload=json.dumps(payload, separators=(",", ":")).encode(),
        flags=HeaderFlag.NO_PERSIST | HeaderFlag.SYNC_ONCE,
    )


async def sync(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    version = get_int(body, "version", minimum=0)
    known = parse_last_msg_seqs(uid, get_str(body, "last_msg_seqs"))
    msg_count = get_int(body, "msg_count", default=20, minimum=0, maximum=MAX_RECENTS)
    only_unread = bool(get_flag(body, "only_unread"))
    exclude = _type_list(body, "exclude_channel_types")
    page = get_int(body, "page", minimum=0)
    page_size = get_int(body, "page_size", default=100, minimum=1, maximum=MAX_PAGE_SIZE)
    parts = await ctx.router.read_every_group(
        {
            "q": "conversations",
            "uid": uid,
            "version": version,
            "known": known,
            "msg_count": msg_count,
            "only_unread": int(only_unread),
            "exclude_channel_types": exclude,
        }
    )
    rows = [row for part in parts for row in part]
    rows.sort(
        key=lambda r: (r["timestamp_ms"], r["version"], r["channel_type"], r["channel_id"]),
        reverse=True,
    )
    if page:
        rows = rows[(page - 1) * page_size : page * page_size]
    out = []
    for row in rows:
        cid = row.pop("channel_id")
        row.pop("timestamp_ms")
        out.append(
            {
                "channel_id": view_channel_id(cid, row["channel_type"], uid),
                **row,
                "recents": [message_resp(m, uid) for m in row["recents"]],
            }
        )
    return Response(200, out)


async def _conversation_op(
    ctx: ApiContext, req: Request, kind: pb.ConversationOp.Kind.ValueType, *, with_seq: bool = True
) -> tuple[str, str, int]:
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    _, canonical, channel_type = person_or_channel(body, "uid")
    if channel_type in NO_CONVERSATION:
        raise bad_request(f"channel_type {channel_type} has no conversations")
    op = pb.ConversationOp(uid=uid, channel_id=canonical, channel_type=channel_type, kind=kind)
    if with_seq:
        op.message_seq = get_int(body, "message_seq", minimum=0)
    if kind == pb.ConversationOp.SET_UNREAD:
        op.unread = get_int(body, "unread", required=True, minimum=0, maximum=0xFFFFFFFF)
    await meta(ctx, canonical, pb.MetaOp(conversation=op))
    return uid, canonical, channel_type


async def _notify_read(ctx: ApiContext, uid: str, canonical: str, channel_type: int) -> None:
    command = unread_clear_command(uid, view_channel_id(canonical, channel_type, uid), channel_type)
    await ctx.router.fanout.push_online(command, [uid])


async def clear_unread(ctx: ApiContext, req: Request) -> Response:
    where = await _conversation_op(ctx, req, pb.ConversationOp.CLEAR_UNREAD)
    await _notify_read(ctx, *where)
    return Response(200, OK)


async def set_unread(ctx: ApiContext, req: Request) -> Response:
    await _conversation_op(ctx, req, pb.ConversationOp.SET_UNREAD, with_seq=False)
    return Response(200, OK)


async def delete(ctx: ApiContext, req: Request) -> Response:
    await _conversation_op(ctx, req, pb.ConversationOp.DELETE)
    return Response(200, OK)


async def clear_messages(ctx: ApiContext, req: Request) -> Response:
    where = await _conversation_op(ctx, req, pb.ConversationOp.CLEAR_MESSAGES)
    await _notify_read(ctx, *where)
    return Response(200, OK)


async def peer_read(ctx: ApiContext, req: Request) -> Response:
    uid = check_id(req.query.get("uid", ""), "uid")
    peer = check_id(req.query.get("channel_id", ""), "channel_id")
    if req.query.get("channel_type", "1") != "1":
        raise bad_request("channel_type must be 1: peerRead is for person channels")
    canonical = person_channel_id(uid, peer)
    row = await ctx.router.read(
        canonical,
        {"q": "conversation_row", "uid": peer, "channel_id": canonical, "channel_type": 1},
    )
    read = 0 if row is None else int(row["read"])
    return Response(200, {"uid": uid, "peer_uid": peer, "readed_to_msg_seq": read})


ROUTES: RouteTable = (
    ("POST", "/conversation/sync", sync),
    ("POST", "/conversations/clearUnread", clear_unread),
    ("POST", "/conversations/setUnread", set_unread),
    ("POST", "/conversations/delete", delete),
    ("POST", "/conversations/clearMessages", clear_messages),
    ("GET", "/conversations/peerRead", peer_read),
)
