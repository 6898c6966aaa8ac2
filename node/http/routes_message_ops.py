"""Operations on stored messages (message operations and retention): revoke, edit,
delete for one user, read receipts, per-channel retention and range deletion.

Each route commits one ``MessageOp`` in the channel's slot group (``groups/message_ops.py``
decides there), then tells online users: a stored 1006 notice for a revoke, online-only
type-99 commands for the rest.
"""

from __future__ import annotations

import json
from typing import Any

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode

from ..channels import view_channel_id
from ..groups.message_ops import MAX_SEQS
from ..ids import online_message_id
from ..pipeline_rules import SYSTEM_UID
from .common import OK, ApiContext, RouteTable, check_id, person_or_channel
from .fields import get_flag, get_int, get_message_id, get_str
from .routes_sends import parse_payload
from .server import ApiError, Request, Response, bad_request

Kind = pb.MessageOp.Kind

REVOKE_NOTICE_TYPE = 1006
_TRANSIENT = {
    ReasonCode.NODE_MATCH_ERROR,
    ReasonCode.NODE_NOT_MATCH,
    ReasonCode.FORWARD_SEND_PACKET_ERROR,
    ReasonCode.SYSTEM_ERROR,
}
COMMAND_TYPE = 99


async def commit(ctx: ApiContext, op: pb.MessageOp) -> dict[str, Any]:
    """Commit ``op`` in its channel's group; refusals become 403, a missing message 404."""
    result = await ctx.router.meta(op.channel_id, pb.MetaOp(message=op))
    if result.reason == ReasonCode.NOT_ALLOW_SEND:
        raise ApiError(403, result.detail, reason=int(result.reason))
    if result.reason == ReasonCode.CHANNEL_NOT_EXIST:
        raise ApiError(404, result.detail or "channel does not exist", reason=int(result.reason))
    if result.reason != ReasonCode.SUCCESS:
        raise ApiError(500, result.detail or "message operation failed", reason=int(result.reason))
    data: dict[str, Any] = json.loads(result.data) if result.data else {}
    if "not_found" in data:
        raise ApiError(404, result.detail)
    return data


async def push_command(
    ctx: ApiContext, channel_id: str, channel_type: int, cmd: str, param: Any, uids: list[str]
) -> None:
    """An online-only command (``{"type":99,"cmd","param"}``) to every session of ``uids``."""
    if not uids:
        return
    payload = {"type": COMMAND_TYPE, "cmd": cmd, "param": param}
    message = pb.Message(
        message_id=online_message_id(),
        message_seq=0,
        channel_id=channel_id,
        channel_type=channel_type,
        from_uid=SYSTEM_UID,
        payload=json.dumps(payload).encode(),
        flags=HeaderFlag.NO_PERSIST | HeaderFlag.SYNC_ONCE,
    )
    await ctx.router.fanout.push_online(message, uids)


def target(body: dict[str, Any], op: pb.MessageOp) -> None:
    """The message a revoke or edit names: ``message_seq`` and/or ``message_id``."""
    seq = get_int(body, "message_seq", minimum=0)
    message_id = get_message_id(body)
    if not seq and not message_id:
        raise bad_request("message_seq or message_id is required")
    if seq:
        op.message_seqs.append(seq)
    op.message_id = message_id


def seq_list(body: dict[str, Any], name: str = "message_seqs") -> list[int]:
    value = body.get(name)
    if value is None:
        raise bad_request(f"{name} is required")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)
    ):
        raise bad_request(f"{name} must be a non-empty list of positive integers")
    if len(value) > MAX_SEQS:
        raise bad_request(f"{name} has more than {MAX_SEQS} entries")
    return value


def actor(body: dict[str, Any], field: str) -> tuple[str, str, int]:
    uid = check_id(get_str(body, field, required=True), field)
    _, canonical, channel_type = person_or_channel(body, field)
    return uid, canonical, channel_type


async def revoke(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid, cid, ctype = actor(body, "from_uid")
    op = pb.MessageOp(
        kind=Kind.REVOKE,
        channel_id=cid,
        channel_type=ctype,
        actor_uid=uid,
        admin=bool(get_flag(body, "admin")),
        revoke_window_ms=ctx.config.messages.revoke_window_s * 1000,
    )
    target(body, op)
    done = await commit(ctx, op)
    notice = {
        "type": REVOKE_NOTICE_TYPE,
        "message_id": str(done["message_id"]),
        "message_seq": done["message_seq"],
        "content": "{0} revoked a message",
        "extra": [{"uid": done["revoker"]}],
    }
    # Stored, so that offline parties get it at sync; red_dot 0 (not unread). The
    # client_msg_no is the revoked message's id: a repeated revoke dedupes to one notice.
    outcome = await ctx.router.send(
        pb.SendItem(
            from_uid=SYSTEM_UID,
            channel_id=cid,
            channel_type=ctype,
            client_msg_no=f"revoke-{done['message_id']}",
            payload=json.dumps(notice).encode(),
            trusted=True,
        )
    )
    if outcome.reason in _TRANSIENT:
        # The tombstone is committed; a retry of the revoke is harmless and stores the
        # notice once (dedupe). Refusals (a disbanded channel) leave the tombstone alone.
        raise ApiError(
            503,
            "revoked, but the revoke notice is not stored yet; retry the revoke",
            reason=int(outcome.reason),
        )
    return Response(
        200,
        {
            "status": 200,
            "message_id": done["message_id"],
            "message_idstr": str(done["message_id"]),
            "message_seq": done["message_seq"],
            "revoker": done["revoker"],
        },
    )


async def edit(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid, cid, ctype = actor(body, "from_uid")
    payload = parse_payload(ctx, body)
    op = pb.MessageOp(
        kind=Kind.EDIT,
        channel_id=cid,
        channel_type=ctype,
        actor_uid=uid,
        admin=bool(get_flag(body, "admin")),
        payload=payload,
    )
    target(body, op)
    done = await commit(ctx, op)
    parties: list[str] = done["parties"]
    # A person channel's id differs per viewer: one push each; a group's is shared.
    audiences = [[p] for p in parties] if ctype == ChannelType.PERSON else [parties]
    for uids in audiences:
        param = {
            "channel_id": view_channel_id(cid, ctype, uids[0]) if uids else cid,
            "channel_type": ctype,
            "message_id": str(done["message_id"]),
            "message_seq": done["message_seq"],
            "version": done["version"],
        }
        await push_command(ctx, cid, ctype, "messageModified", param, uids)
    return Response(
        200,
        {
            "status": 200,
            "message_id": done["message_id"],
            "message_seq": done["message_seq"],
            "version": done["version"],
            "edited_at": done["edited_at"],
        },
    )


async def delete_for_user(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid, cid, ctype = actor(body, "uid")
    seqs = seq_list(body)
    op = pb.MessageOp(
        kind=Kind.DELETE_FOR_USER,
        channel_id=cid,
        channel_type=ctype,
        actor_uid=uid,
        message_seqs=seqs,
    )
    done = await commit(ctx, op)
    param = {
        "channel_id": view_channel_id(cid, ctype, uid),
        "channel_type": ctype,
        "message_seqs": done["message_seqs"],
    }
    # The user's other devices hide them too.
    await push_command(ctx, cid, ctype, "messageDeleted", param, [uid])
    return Response(200, OK)


async def readed(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid, cid, ctype = actor(body, "uid")
    op = pb.MessageOp(
        kind=Kind.READ_RECEIPT,
        channel_id=cid,
        channel_type=ctype,
        actor_uid=uid,
        message_seqs=seq_list(body),
    )
    done = await commit(ctx, op)
    for receipt in done["receipts"]:
        sender = receipt["from_uid"]
        param = {
            "channel_id": view_channel_id(cid, ctype, sender),
            "channel_type": ctype,
            "message_id": str(receipt["message_id"]),
            "message_seq": receipt["message_seq"],
            "reader": uid,
            "read_count": receipt["read_count"],
        }
        await push_command(ctx, cid, ctype, "messageReceipt", param, [sender])
    return Response(200, OK)


async def receipt(ctx: ApiContext, req: Request) -> Response:
    q = req.query
    body: dict[str, Any] = {"channel_id": q.get("channel_id"), "login_uid": q.get("login_uid")}
    for name in ("channel_type", "message_seq"):
        raw = q.get(name)
        try:
            body[name] = None if raw is None else int(raw)
        except ValueError:
            raise bad_request(f"{name} must be an integer") from None
    _, cid, ctype = person_or_channel(body, "login_uid")
    seq = get_int(body, "message_seq", required=True, minimum=1)
    found = await ctx.router.read(
        cid, {"q": "receipt", "channel_id": cid, "channel_type": ctype, "message_seq": seq}
    )
    if found is None:
        raise ApiError(404, f"no message with seq {seq} in this channel")
    return Response(
        200,
        {
            "message_id": found["message_id"],
            "message_idstr": str(found["message_id"]),
            "message_seq": seq,
            "receipt": found["receipt"],
            "read_count": found["read_count"],
            "unread_count": found["unread_count"],
            "readers": found["readers"],
        },
    )


async def retention(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    _, cid, ctype = person_or_channel(body, "login_uid")
    days = body.get("retention_days")
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days < 1e6:
        raise bad_request("retention_days must be a number of days, 0 to 999999")
    op = pb.MessageOp(
        kind=Kind.SET_RETENTION, channel_id=cid, channel_type=ctype, retention_days=days
    )
    await commit(ctx, op)
    return Response(200, OK)


async def messages_delete(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    _, cid, ctype = person_or_channel(body, "login_uid")
    upto = get_int(body, "max_message_seq", required=True, minimum=1)
    op = pb.MessageOp(
        kind=Kind.DELETE_RANGE, channel_id=cid, channel_type=ctype, message_seqs=[upto]
    )
    done = await commit(ctx, op)
    return Response(200, {"status": 200, "deleted_to_seq": done["floor"]})


ROUTES: RouteTable = (
    ("POST", "/message/revoke", revoke),
    ("POST", "/message/edit", edit),
    ("POST", "/message/delete", delete_for_user),
    ("POST", "/message/readed", readed),
    ("GET", "/message/receipt", receipt),
    ("POST", "/channel/retention", retention),
    ("POST", "/channel/messages_delete", messages_delete),
)
