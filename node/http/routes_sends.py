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
from ..command_channels import temp_channel_id
from ..groups.command_sync import decode_position
from ..pipeline_rules import SYSTEM_UID
from ..router import ClusterUnavailable
from ..send_admission import (
    API,
    API_SUBSCRIBERS,
    Checked,
    Draft,
    Refusal,
    Settings,
    admit_checked,
    admit_send,
    check_fields,
    check_payload,
)
from .common import (
    OK,
    ApiContext,
    RouteTable,
    check_id,
    message_resp,
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


def decode_payload(body: dict[str, Any]) -> bytes:
    """The base64 ``payload`` as bytes (its size and conventions are admission's)."""
    raw = get_str(body, "payload", required=True)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("payload must be base64") from None


def parse_payload(ctx: ApiContext, body: dict[str, Any]) -> bytes:
    """The base64 ``payload``, within the size limit and the payload conventions."""
    return read_payload(ctx, body)[0]


def read_payload(ctx: ApiContext, body: dict[str, Any]) -> tuple[bytes, dict[str, Any] | None]:
    """(``parse_payload``, the payload as a typed JSON object or ``None``)."""
    payload = decode_payload(body)
    typed, refusal = check_payload(payload, Settings.of(ctx.config, ctx.rules))
    if refusal is not None:
        raise bad_request(refusal.message)
    return payload, typed


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
    payload, typed = read_payload(ctx, body)
    flags = parse_flags(ctx, body, payload)
    if not flags & HeaderFlag.SYNC_ONCE:
        raise bad_request("subscribers requires header.sync_once = 1")
    client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
    draft = Draft(
        from_uid=from_uid,
        channel_id=temp_channel_id(uids),
        channel_type=ChannelType.TEMP,
        payload=payload,
        client_msg_no=client_msg_no,
        flags=flags,
        expire=get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF),
        subscribers=tuple(uids),
    )
    settings = Settings.of(ctx.config, ctx.rules)
    checked = check_fields(draft, typed, settings, API_SUBSCRIBERS)
    if isinstance(checked, Refusal):
        raise bad_request(checked.message)
    admitted = await admit_checked(checked, ctx.facts, settings, API_SUBSCRIBERS, None)
    if isinstance(admitted, Refusal):
        outcome = refused(admitted)
    else:
        outcome = await ctx.router.send(admitted)
    raise_for_reason(ReasonCode(outcome.reason), client_msg_no)
    return _sent(outcome, client_msg_no)


def refused(refusal: Refusal) -> pb.SendOutcome:
    """The outcome of a send that admission refused (nothing proposed); a malformed request
    is answered 400 with the refusal's message."""
    if refusal.malformed:
        raise bad_request(refusal.message)
    return pb.SendOutcome(reason=refusal.reason)


async def checked_send_each(
    ctx: ApiContext, drafts: list[Draft], typed: dict[str, Any] | None
) -> list[pb.SendOutcome]:
    """``send_each`` of one sender's sends after admission (their one payload passed
    ``check_payload`` as ``typed``): refused drafts are answered without a proposal. The
    batch takes one token of the sender's rate limit, not one per recipient: it is one send
    operation, as a group message is."""
    settings = Settings.of(ctx.config, ctx.rules)
    items: list[pb.SendItem] = []
    for draft in drafts:
        checked = check_fields(draft, typed, settings, API)
        if isinstance(checked, Refusal):
            raise bad_request(checked.message)
        items.append(checked.item)
    results: list[pb.SendItem | Refusal] = list(items)

    async def admit_one(i: int) -> None:
        try:
            results[i] = await admit_checked(
                Checked(items[i], typed), ctx.facts, settings, API, None
            )
        except ClusterUnavailable as e:
            results[i] = Refusal(e.reason, str(e))

    async with trio.open_nursery() as nursery:
        for i in range(len(items)):
            nursery.start_soon(admit_one, i)
    outcomes = [
        pb.SendOutcome(reason=r.reason if isinstance(r, Refusal) else ReasonCode.SUCCESS)
        for r in results
    ]
    allowed = [(i, r) for i, r in enumerate(results) if isinstance(r, pb.SendItem)]
    system = any(item.system for _, item in allowed)
    if allowed and not system and not ctx.rules.senders.allow(allowed[0][1].from_uid):
        for i, _ in allowed:
            outcomes[i] = pb.SendOutcome(reason=ReasonCode.RATE_LIMIT)
        allowed = []
    sent = await send_each(ctx, [item for _, item in allowed])
    for (i, _), outcome in zip(allowed, sent, strict=True):
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
    if channel_type == ChannelType.PERSON and from_uid == SYSTEM_UID:
        raise bad_request("from_uid is required for a person channel")
    channel_id = get_str(body, "channel_id", required=True)
    payload = decode_payload(body)
    # An omitted red_dot counts as 1 here: a message raises the unread count unless the
    # backend says otherwise (docs/messaging.md).
    flags = parse_flags(ctx, body, payload, red_dot_default=True)
    client_msg_no = get_str(body, "client_msg_no") or uuid.uuid4().hex
    expire = get_int(body, "expire", minimum=0, maximum=0xFFFFFFFF)
    setting = get_int(body, "setting", minimum=0, maximum=255)  # 0x80: receipts
    if get_flag(body, "is_stream"):
        # The anchor of a stream: events follow with /message/event (routes_streams).
        setting |= Setting.STREAM
    draft = Draft(
        from_uid=from_uid,
        channel_id=channel_id,
        channel_type=channel_type,
        payload=payload,
        client_msg_no=client_msg_no,
        setting=setting,
        flags=flags,
        expire=expire,
    )
    settings = Settings.of(ctx.config, ctx.rules)
    admitted = await admit_send(draft, ctx.facts, settings, API, ctx.rules.senders.allow)
    if isinstance(admitted, Refusal):
        outcome = refused(admitted)  # a rule refused it: nothing proposed
    else:
        outcome = await ctx.router.send(admitted)
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
    payload, typed = read_payload(ctx, body)
    flags = parse_flags(ctx, body, payload)
    drafts = [
        Draft(
            from_uid=from_uid,
            channel_id=uid,  # addressed by the peer's uid, as a client does
            channel_type=ChannelType.PERSON,
            payload=payload,
            client_msg_no=uuid.uuid4().hex,
            flags=flags,
        )
        for uid in uids
    ]
    outcomes = await checked_send_each(ctx, drafts, typed)
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
