"""Sends: ``/message/send`` (to a channel, or to an explicit recipient list with
``subscribers``), batch person sends (``/message/sendbatch``), and the per-device sync of
command messages (``/message/sync``, ``/message/syncack``). See ``docs/messaging.md``."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import trio

from proto.raftchat.peer.v1 import peer_pb2 as pb
from proto.wkproto import ChannelType, HeaderFlag, ReasonCode, Setting

from .. import payload_conventions as conventions
from ..channels import person_channel_id
from ..command_channels import temp_channel_id
from ..groups.command_sync import decode_position
from ..pipeline_rules import SYSTEM_UID, request_problem
from ..router import ClusterUnavailable
from ..send_checks import precheck
from .common import (
    CHANNEL_TYPES,
    OK,
    ApiContext,
    RouteTable,
    check_id,
    message_resp,
    person_or_channel,
)
from .fields import get_flag, get_int, get_str, get_str_list
from .server import ApiError, Request, Response, bad_request

MAX_SUBSCRIBERS = 1000
"""Recipients of one explicit-list send or one batch send."""
MAX_SYNC_LIMIT = 1000
_DEVICE_FLAGS = {0, 1, 2}
_RETRY_REASONS = (
    ReasonCode.NODE_MATCH_ERROR,
    ReasonCode.NODE_NOT_MATCH,
    ReasonCode.FORWARD_SEND_PACKET_ERROR,
)


def parse_payload(ctx: ApiContext, body: dict[str, Any]) -> bytes:
    """The base64 ``payload``, within the size limit and the payload conventions."""
    raw = get_str(body, "payload", required=True)
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("payload must be base64") from None
    limit = ctx.config.messages.max_payload_bytes
    if len(payload) > limit:
        raise bad_request(f"payload is larger than {limit} bytes")
    if ctx.config.messages.payload_conventions:
        _, problem = conventions.read(payload)
        if problem is not None:
            raise bad_request(problem)
    return payload


def parse_flags(
    ctx: ApiContext, body: dict[str, Any], payload: bytes, *, red_dot_default: bool = False
) -> int:
    """The WKProto header flags of a request's ``header`` object; ``red_dot_default`` is the
    red dot of a header that does not mention it. Without any ``header``, a system notice or
    command gets its recommended flags (``payload_conventions``)."""
    header = body.get("header")
    if header is None and ctx.config.messages.payload_conventions:
        advice = conventions.recommended_flags(conventions.parse(payload))
        if advice is not None:
            return advice
    header = header or {}
    if not isinstance(header, dict):
        raise bad_request("header must be an object")
    flags = 0
    for name, bit in (
        ("no_persist", HeaderFlag.NO_PERSIST),
        ("red_dot", HeaderFlag.RED_DOT),
        ("sync_once", HeaderFlag.SYNC_ONCE),
    ):
        try:
            if get_flag(header, name):
                flags |= bit
        except ApiError as e:
            raise bad_request(f"header.{e.msg}") from None
    if red_dot_default and header.get("red_dot") is None:
        flags |= HeaderFlag.RED_DOT
    return flags


def parse_uids(body: dict[str, Any], name: str) -> list[str]:
    uids = get_str_list(body, name, required=True)
    if not uids:
        raise bad_request(f"{name} must not be empty")
    if len(uids) > MAX_SUBSCRIBERS:
        raise bad_request(f"{name} lists more than {MAX_SUBSCRIBERS} uids")
    for uid in uids:
        check_id(uid, f"{name} uid")
    return list(dict.fromkeys(uids))  # in order, once each


def sender(body: dict[str, Any]) -> str:
    from_uid = get_str(body, "from_uid") or get_str(body, "sender_uid") or SYSTEM_UID
    if from_uid != SYSTEM_UID:
        check_id(from_uid, "from_uid")
    return from_uid


def raise_for_reason(reason: ReasonCode, client_msg_no: str) -> None:
    """The HTTP answer of a send that did not succeed (as ``/message/send``)."""
    if reason == ReasonCode.SUCCESS:
        return
    if reason in _RETRY_REASONS:
        raise ApiError(
            503,
            f"not committed as far as known ({reason.name}); retry with this client_msg_no",
            reason=int(reason),
            client_msg_no=client_msg_no,
        )
    if reason == ReasonCode.RATE_LIMIT:
        raise ApiError(
            429,
            "send rate limit reached (per channel, or per sender on person channels); retry later",
            reason=int(reason),
        )
    if reason == ReasonCode.SYSTEM_ERROR:
        raise ApiError(500, "message could not be stored", reason=int(reason))
    raise ApiError(403, f"send refused: {reason.name}", reason=int(reason))


def _sent(outcome: pb.SendOutcome, client_msg_no: str) -> Response:
    """The answer of a committed send."""
    return Response(
        200,
        {
            "message_id": outcome.message_id,
            "message_idstr": str(outcome.message_id),
            "message_seq": outcome.message_seq,
            "client_msg_no": client_msg_no,
        },
    )


async def subscriber_send(ctx: ApiContext, body: dict[str, Any]) -> Response:
    """``/message/send`` with an explicit ``subscribers`` list instead of a channel: the message
    reaches exactly those uids. Stored ones (not ``no_persist``) go to the temp channel of that
    uid set (type 8; its command twin, as they are sync_once), so they can be synced."""
    if get_str(body, "channel_id"):
        raise bad_request("channel_id and subscribers are mutually exclusive")
    uids = parse_uids(body, "subscribers")
    from_uid = sender(body)
    payload = parse_payload(ctx, body)
    flags = parse_flags(ctx, body, payload)
    if not flags & HeaderFlag.SYNC_ONCE:
        raise bad_request("subscribers requires header.sync_once = 1")
    client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
    expire = get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF)
    channel_id = temp_channel_id(uids)
    problem = request_problem(client_msg_no, "", "", channel_id, from_uid, expire)
    if problem is not None:
        raise bad_request(problem)
    outcome = await ctx.router.send(
        pb.SendItem(
            from_uid=from_uid,
            channel_id=channel_id,
            channel_type=ChannelType.TEMP,
            client_msg_no=client_msg_no,
            payload=payload,
            flags=flags,
            expire=expire,
            trusted=True,
            subscribers=uids,
        )
    )
    raise_for_reason(ReasonCode(outcome.reason), client_msg_no)
    return _sent(outcome, client_msg_no)


async def checked_send_each(ctx: ApiContext, items: list[pb.SendItem]) -> list[pb.SendOutcome]:
    """``send_each`` of one sender's person messages after the user-level rules (send ban, the
    receivers' person lists), as every HTTP send in a user's name: refused items are answered
    without a proposal. The batch takes one token of the sender's rate limit, not one per
    recipient: it is one send operation, as a group message is."""
    reasons: list[ReasonCode] = [ReasonCode.SUCCESS] * len(items)

    async def check(i: int) -> None:
        try:
            reasons[i] = await precheck(ctx.facts, items[i], ctx.rules, limited=False)
        except ClusterUnavailable as e:
            reasons[i] = e.reason

    async with trio.open_nursery() as nursery:
        for i in range(len(items)):
            nursery.start_soon(check, i)
    allowed = [i for i, r in enumerate(reasons) if r == ReasonCode.SUCCESS]
    system = any(items[i].system for i in allowed)
    if allowed and not system and not ctx.rules.senders.allow(items[allowed[0]].from_uid):
        for i in allowed:
            reasons[i] = ReasonCode.RATE_LIMIT
        allowed = []
    sent = await send_each(ctx, [items[i] for i in allowed])
    outcomes = [pb.SendOutcome(reason=r) for r in reasons]
    for i, outcome in zip(allowed, sent, strict=True):
        outcomes[i] = outcome
    return outcomes


async def send_each(ctx: ApiContext, items: list[pb.SendItem]) -> list[pb.SendOutcome]:
    """Commit independent sends concurrently; all are queued first, in order."""
    finishes = [ctx.router.begin_send(item) for item in items]
    outcomes: list[pb.SendOutcome] = [pb.SendOutcome() for _ in items]

    async def one(i: int) -> None:
        outcomes[i] = await finishes[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(items)):
            nursery.start_soon(one, i)
    return outcomes


async def message_send(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    if body.get("subscribers") is not None:
        return await subscriber_send(ctx, body)
    from_uid = sender(body)
    channel_type = get_int(body, "channel_type", required=True)
    if channel_type not in CHANNEL_TYPES:
        raise bad_request(f"channel_type must be one of 1-12, got {channel_type}")
    if channel_type == ChannelType.PERSON and from_uid == SYSTEM_UID:
        raise bad_request("from_uid is required for a person channel")
    _, canonical, _ = person_or_channel({**body, "from_uid": from_uid}, "from_uid")
    payload = parse_payload(ctx, body)
    # An omitted red_dot counts as 1 here: a message raises the unread count unless the
    # backend says otherwise (docs/messaging.md).
    flags = parse_flags(ctx, body, payload, red_dot_default=True)
    client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
    expire = get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF)
    problem = request_problem(client_msg_no, "", "", canonical, from_uid, expire)
    if problem is not None:
        raise bad_request(problem)
    setting = get_int(body, "setting", minimum=0, maximum=255)  # 0x80: receipts
    if get_flag(body, "is_stream"):
        # The anchor of a stream: events follow with /message/event (routes_streams).
        setting |= Setting.STREAM
    item = pb.SendItem(
        from_uid=from_uid,
        channel_id=canonical,
        channel_type=channel_type,
        client_msg_no=client_msg_no,
        payload=payload,
        flags=flags,
        expire=expire,
        setting=setting,
        trusted=True,
    )
    refused = await precheck(ctx.facts, item, ctx.rules)
    if refused != ReasonCode.SUCCESS:
        outcome = pb.SendOutcome(reason=refused)  # user-level rule: nothing proposed
    else:
        outcome = await ctx.router.send(item)
    reason = ReasonCode(outcome.reason)
    if ctx.metrics is not None:
        ctx.metrics.sendack("http", reason)
    if reason == ReasonCode.CHANNEL_NOT_EXIST:
        raise ApiError(404, f"channel {body['channel_id']} does not exist", reason=reason)
    # A retryable answer carries the client_msg_no, so that a retry is recognised (dedupe)
    # even when the server made it up.
    raise_for_reason(reason, client_msg_no)
    return _sent(outcome, client_msg_no)


async def send_batch(ctx: ApiContext, req: Request) -> Response:
    """The same payload as a person message from ``from_uid`` to each subscriber; every
    recipient's send succeeds or fails on its own (``fail_uids`` with the reason codes)."""
    body = req.json_object()
    from_uid = check_id(get_str(body, "from_uid", required=True), "from_uid")
    uids = parse_uids(body, "subscribers")
    payload = parse_payload(ctx, body)
    flags = parse_flags(ctx, body, payload)
    items = [
        pb.SendItem(
            from_uid=from_uid,
            channel_id=person_channel_id(from_uid, uid),
            channel_type=ChannelType.PERSON,
            client_msg_no=uuid.uuid4().hex,
            payload=payload,
            flags=flags,
            trusted=True,
        )
        for uid in uids
    ]
    outcomes = await checked_send_each(ctx, items)
    failed = [(u, o.reason) for u, o in zip(uids, outcomes, strict=True) if o.reason != 1]
    return Response(
        200, {"fail_uids": [u for u, _ in failed], "reason": [int(r) for _, r in failed]}
    )


async def command_sync(ctx: ApiContext, req: Request) -> Response:
    """The user's pending command messages: the oldest slot group's pending page (one group
    per page, so that the last ``message_seq`` acknowledges exactly what was seen)."""
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    flag = get_int(body, "device_flag", default=0, choices=_DEVICE_FLAGS)
    after = get_int(body, "message_seq", default=0, minimum=0)
    limit = get_int(body, "limit", default=200, minimum=1, maximum=MAX_SYNC_LIMIT)
    query = {
        "q": "cmd_pending",
        "uid": uid,
        "device_flag": flag,
        "after": after,
        "limit": limit,
    }
    pages = [p for p in await ctx.router.read_every_group(query) if p["entries"]]
    if not pages:
        return Response(200, [])
    oldest = min(
        pages,
        key=lambda p: (
            p["entries"][0]["message"]["timestamp_ms"],
            p["entries"][0]["message"]["message_id"],
        ),
    )
    out = []
    for entry in oldest["entries"]:
        m = message_resp(entry["message"], uid)
        m["channel_message_seq"] = m["message_seq"]
        m["message_seq"] = entry["sync_seq"]
        out.append(m)
    return Response(200, out)


async def command_syncack(ctx: ApiContext, req: Request) -> Response:
    body = req.json_object()
    uid = check_id(get_str(body, "uid", required=True), "uid")
    flag = get_int(body, "device_flag", default=0, choices=_DEVICE_FLAGS)
    last = get_int(body, "last_message_seq", required=True, minimum=1)
    position, group = decode_position(last)
    if position == 0 or group not in ctx.router.placement.groups:
        raise bad_request("last_message_seq is not a message_seq that /message/sync returned")
    op = pb.MetaOp(command_ack=pb.CommandAck(uid=uid, device_flag=flag, position=position))
    result = await ctx.router.meta_group(group, op)
    if result.reason != ReasonCode.SUCCESS:
        raise ApiError(500, result.detail or "acknowledgement failed", reason=result.reason)
    return Response(200, OK)


ROUTES: RouteTable = (
    ("POST", "/message/send", message_send),
    ("POST", "/message/sendbatch", send_batch),
    ("POST", "/message/sync", command_sync),
    ("POST", "/message/syncack", command_syncack),
)
